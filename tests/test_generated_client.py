"""openapi.yaml as a generated client sees it.

A Python client is generated from the committed openapi.yaml with
openapi-python-client (offline, from its own venv: see
tests/codegen-requirements.txt), and only that client talks to the real
service process: upload a raw body with a name, wait, read the URL, list,
delete, all with an API key. The handed-out URL is fetched with a plain GET.
Generation warnings fail the test: a contract that the generator cannot
express (an unsupported body, a bad schema) is a broken contract.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from tests.service_process import ServiceRunner

ROOT = Path(__file__).resolve().parents[1]
CODEGEN_BIN = ROOT / ".venv-codegen" / "bin" / "openapi-python-client"
PACKAGE = "verified_urls_client"
API_KEY = "generated-client-secret-key-0123456789"
TENANT = "acme"


def _ensure_generator() -> None:
    """`make codegen` builds the generator's venv; `make test` has done it already."""
    if not CODEGEN_BIN.exists():
        subprocess.run(["make", "-s", "codegen"], cwd=ROOT, check=True)


@pytest.fixture(scope="module")
def client_package(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    _ensure_generator()
    out = tmp_path_factory.mktemp("client")
    env = dict(os.environ)
    # the generator formats its output with ruff, which the project's venv has
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    generated = subprocess.run(
        [
            str(CODEGEN_BIN),
            "generate",
            "--path",
            str(ROOT / "openapi.yaml"),
            "--meta",
            "none",
            "--fail-on-warning",
            "--output-path",
            str(out / PACKAGE),
        ],
        cwd=out,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert generated.returncode == 0, generated.stdout + generated.stderr
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(out))
        yield importlib.import_module(PACKAGE)
        for module in [name for name in sys.modules if name.split(".")[0] == PACKAGE]:
            del sys.modules[module]


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceRunner]:
    with ServiceRunner(tmp_path_factory.mktemp("generated-client")) as runner:
        runner.start({"VERIFIED_URLS_API_KEYS": f"{TENANT}:{API_KEY}"})
        yield runner


def test_the_whole_flow_through_the_generated_client(
    client_package: ModuleType, service: ServiceRunner, tmp_path: Path
) -> None:
    from verified_urls_client import AuthenticatedClient, Client
    from verified_urls_client.api.service import health

    # the clients are context managers: they close their connections at the end
    with Client(base_url=service.base_url) as anonymous:  # liveness needs no key
        assert health.sync(client=anonymous).status == "ok"
    with AuthenticatedClient(base_url=service.base_url, token=API_KEY, timeout=30.0) as client:
        _flow(client, tmp_path)


def _flow(client: Any, tmp_path: Path) -> None:
    """upload, wait, URL, fetch, list, delete; `client` is an AuthenticatedClient"""
    from verified_urls_client.api.objects import (
        delete_object,
        get_object,
        list_objects,
        upload_object,
    )
    from verified_urls_client.models import ObjectPage, ObjectRecord, ObjectState
    from verified_urls_client.types import File

    data = os.urandom(70_000)
    path = tmp_path / "summary.pdf"
    path.write_bytes(data)

    # upload: the raw body streamed from a file, a name, the object's media type
    with path.open("rb") as body:
        uploaded = upload_object.sync_detailed(
            client=client,
            body=File(payload=body),
            name="reports/2026 summary.pdf",
            content_type="application/pdf",
        )
    assert uploaded.status_code in (201, 202), uploaded.content
    record = uploaded.parsed
    assert isinstance(record, ObjectRecord)
    assert uploaded.headers["location"] == f"/v1/objects/{record.id}"
    assert record.name == "reports/2026 summary.pdf"
    assert record.key == f"{TENANT}/reports/2026 summary.pdf"
    assert (record.size, record.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert record.content_type == "application/pdf"

    # wait (long-poll) until it is verified; the URL comes only then
    read = get_object.sync(client=client, object_id=record.id, wait=10)
    assert isinstance(read, ObjectRecord), read
    assert read.state == ObjectState.VERIFIED
    assert isinstance(read.url, str)

    # the URL serves the very bytes, to anyone, with the object's type
    fetched = httpx.get(read.url, timeout=30.0)
    assert fetched.status_code == 200
    assert fetched.content == data
    assert fetched.headers["content-type"] == "application/pdf"

    # an unchanged record is a bodyless 304 to a client that sends its ETag
    first = get_object.sync_detailed(client=client, object_id=record.id)
    again = get_object.sync_detailed(
        client=client, object_id=record.id, if_none_match=first.headers["etag"]
    )
    assert (first.status_code, again.status_code) == (200, 304)

    # the listing has it, also when asked for verified objects only
    page = list_objects.sync(client=client, state=ObjectState.VERIFIED, limit=10)
    assert isinstance(page, ObjectPage)
    assert [item.id for item in page.items] == [record.id]
    assert page.next_cursor is None

    # delete: the record says deleted, the URL is never handed out again
    deleted = delete_object.sync(client=client, object_id=record.id)
    assert isinstance(deleted, ObjectRecord)
    assert deleted.state == ObjectState.DELETED
    assert deleted.url is None
    after = get_object.sync(client=client, object_id=record.id)
    assert isinstance(after, ObjectRecord)
    assert (after.state, after.url) == (ObjectState.DELETED, None)
    listed = list_objects.sync(client=client, state=ObjectState.VERIFIED)
    assert isinstance(listed, ObjectPage)
    assert listed.items == []


def test_errors_are_typed_problems(client_package: ModuleType, service: ServiceRunner) -> None:
    from verified_urls_client import AuthenticatedClient
    from verified_urls_client.api.objects import get_object, upload_object
    from verified_urls_client.models import Problem
    from verified_urls_client.types import File

    with (
        AuthenticatedClient(base_url=service.base_url, token=API_KEY) as client,
        AuthenticatedClient(base_url=service.base_url, token="not-a-key") as wrong_key,
    ):
        missing = get_object.sync(client=client, object_id="no-such-object")
        assert isinstance(missing, Problem)
        assert (missing.status, missing.code) == (404, "not_found")

        refused = get_object.sync_detailed(client=wrong_key, object_id="no-such-object")
        assert refused.status_code == 401
        assert isinstance(refused.parsed, Problem)
        assert refused.parsed.code == "unauthorized"

        bad_name = upload_object.sync(
            client=client, body=File(payload=io.BytesIO(b"x")), name="../up"
        )
        assert isinstance(bad_name, Problem)
        assert (bad_name.status, bad_name.code) == (400, "invalid_name")
