"""openapi.yaml is the committed contract: it must equal what the app serves."""

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.cli import openapi_document
from service.naming import name_problem
from service.objects import IDEMPOTENCY_KEY, content_type_problem

OPENAPI_FILE = Path(__file__).resolve().parents[1] / "openapi.yaml"


def test_openapi_yaml_equals_the_app() -> None:
    committed = yaml.safe_load(OPENAPI_FILE.read_text())
    assert committed == openapi_document(), "run `make openapi` and commit openapi.yaml"


def test_every_error_response_is_a_problem() -> None:
    document = openapi_document()
    for path, operations in document["paths"].items():  # type: ignore[attr-defined]
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if status.startswith(("4", "5")):
                    assert "application/problem+json" in response["content"], (path, method, status)


# Names the service refuses must be outside the document's pattern, and the
# other way round: schemathesis sent "" and a name with a control character
# (U+0006), which the document allowed and the service refused with 400.
NAMES = [
    "",
    "m*\x06P\xebA\xaa\x04\xcc\xee\xee\xd9G1\xe0",
    "a\n",
    "tab\there",
    "del\x7f",
    "c1\x85",
    "bad\ufffdutf8",
    "/lead",
    "trail/",
    "a//b",
    ".",
    "..",
    "a/./b",
    "a/../b",
    "a/..",
    "./a",
    "ok.txt",
    "photos/summer 2026.png",
    "a+b%20c",
    ".hidden/..dots/...",
    "日本語/ファイル.pdf",
    "emoji \U0001f600",
]


@pytest.mark.parametrize("name", NAMES)
def test_the_documented_name_pattern_is_the_name_policy(name: str) -> None:
    parameter = _parameter("/v1/objects", "post", "name")["schema"]
    documented = re.search(parameter["pattern"], name) is not None and len(name) >= 1
    assert documented == (name_problem(name) is None), name


CONTENT_TYPES = ["", " ", "text/plain", "text/plain; charset=utf-8", "a\n", "\u00e9", "t\x7f"]


@pytest.mark.parametrize("content_type", CONTENT_TYPES)
def test_the_documented_content_type_pattern_is_the_check(content_type: str) -> None:
    parameter = _parameter("/v1/objects", "post", "content_type")["schema"]
    documented = re.search(parameter["pattern"], content_type) is not None
    assert documented == (content_type_problem(content_type) is None), repr(content_type)


KEYS = ["", " a", "a ", "a b", "x" * 255, "x" * 256, "k\n", "\u00e9", "uuid-1234"]


@pytest.mark.parametrize("key", KEYS)
def test_the_documented_idempotency_key_pattern_is_the_check(key: str) -> None:
    parameter = _parameter("/v1/objects", "post", "idempotency-key")["schema"]
    documented = re.search(parameter["pattern"], key) is not None and len(key) <= 255
    assert documented == (IDEMPOTENCY_KEY.match(key) is not None), repr(key)


def test_links_lead_from_records_and_pages_to_reads_and_deletes() -> None:
    document: Any = openapi_document()
    upload = document["paths"]["/v1/objects"]["post"]["responses"]
    for status in ("201", "202"):
        links = upload[status]["links"]
        assert links["GetObject"]["operationId"] == "get_object"
        assert links["DeleteObject"]["parameters"] == {"object_id": "$response.body#/id"}
    listing = document["paths"]["/v1/objects"]["get"]["responses"]["200"]["links"]
    assert listing["GetFirstObject"]["parameters"] == {"object_id": "$response.body#/items/0/id"}
    assert listing["NextPage"]["parameters"]["cursor"] == "$response.body#/next_cursor"


def _parameter(path: str, method: str, name: str) -> dict[str, Any]:
    document: Any = openapi_document()
    parameters = document["paths"][path][method]["parameters"]
    return next(parameter for parameter in parameters if parameter["name"] == name)
