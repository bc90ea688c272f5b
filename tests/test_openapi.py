"""openapi.yaml is the committed contract: it must equal what the app serves."""

from pathlib import Path

import yaml

from service.cli import openapi_document

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
