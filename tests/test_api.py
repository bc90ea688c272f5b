"""The API through the real app, with moto's server over HTTP as the store,
on SQLite and on PostgreSQL."""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.ledger import repository
from service.ledger.database import make_engine, make_sessionmaker
from service.settings import Settings
from service.storage.base import multipart_etag

MIB = 1024 * 1024


@contextmanager
def running(settings: Settings, **kwargs: Any) -> Iterator[TestClient]:
    with TestClient(create_app(settings, **kwargs)) as client:
        yield client


@pytest.fixture
def client(make_settings: Callable[..., Settings]) -> Iterator[TestClient]:
    with running(make_settings()) as client:
        yield client


def upload(client: TestClient, name: str, data: bytes, **params: Any) -> httpx.Response:
    headers = params.pop("headers", {"Content-Type": "text/plain"})
    return client.post(
        "/v1/objects", params={"name": name, **params}, content=data, headers=headers
    )


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["code"] == code and body["status"] == status
    assert body["type"].endswith("/" + code) and body["title"] and body["detail"]
    return body


def ledger_state(settings: Settings) -> tuple[int, list[Path]]:
    """How many rows the ledger holds and which files the spool holds."""
    engine = make_engine(settings.DATABASE_URL)
    try:
        with make_sessionmaker(engine)() as session:
            rows = len(repository.list_objects(session, "default", None, 1000, None))
    finally:
        engine.dispose()
    spool = sorted(settings.SPOOL_DIR.iterdir()) if settings.SPOOL_DIR.exists() else []
    return rows, spool


def test_upload_wait_verified_url_serves_the_bytes(client: TestClient) -> None:
    data = b"hello verified world\n"
    response = upload(client, "greetings/hello world+1%.txt", data, wait=10)
    assert response.status_code == 201, response.text
    record = response.json()
    assert response.headers["location"] == f"/v1/objects/{record['id']}"
    assert record["state"] == "verified"
    assert record["size"] == len(data)
    assert record["sha256"] == hashlib.sha256(data).hexdigest()
    assert record["content_type"] == "text/plain"
    assert record["store_attempts"] == 1 and record["checks"] == 1 and record["rounds"] == 1
    assert record["error"] is None and record["verified_at"] is not None
    assert record["settle_by"] > record["created_at"]
    assert record["url"].endswith("/greetings/hello%20world%2B1%25.txt")
    fetched = httpx.get(record["url"])
    assert fetched.status_code == 200 and fetched.content == data


def test_without_wait_202_pending_then_long_poll(client: TestClient) -> None:
    response = upload(client, "later.txt", b"x" * 1000)
    assert response.status_code == 202
    record = response.json()
    if record["state"] == "pending":
        assert record["url"] is None
        assert int(response.headers["retry-after"]) >= 1
    polled = client.get(f"/v1/objects/{record['id']}", params={"wait": 10})
    assert polled.status_code == 200
    assert polled.json()["state"] == "verified" and polled.json()["url"]
    assert "retry-after" not in polled.headers


def test_multipart_form_upload_keeps_the_part_content_type(client: TestClient) -> None:
    data = os.urandom(300_000)
    response = client.post(
        "/v1/objects",
        params={"name": "form/picture.png", "wait": 10},
        files={"file": ("picture.png", data, "image/png")},
        data={"note": "ignored"},
    )
    assert response.status_code == 201, response.text
    record = response.json()
    assert record["content_type"] == "image/png" and record["size"] == len(data)
    assert httpx.get(record["url"]).content == data


def test_the_content_type_parameter_wins_over_the_request_and_the_form_part(
    client: TestClient,
) -> None:
    """A generated client sends raw bodies as application/octet-stream: the
    `content_type` query parameter is how it names the object's real type."""
    raw = upload(
        client,
        "raw.pdf",
        b"%PDF-1.7",
        wait=10,
        content_type="application/pdf",
        headers={"Content-Type": "application/octet-stream"},
    )
    assert raw.status_code == 201, raw.text
    assert raw.json()["content_type"] == "application/pdf"
    assert httpx.get(raw.json()["url"]).headers["content-type"] == "application/pdf"
    form = client.post(
        "/v1/objects",
        params={"name": "form.svg", "wait": 10, "content_type": "image/svg+xml"},
        files={"file": ("form.svg", b"<svg/>", "application/octet-stream")},
    )
    assert form.status_code == 201, form.text
    assert form.json()["content_type"] == "image/svg+xml"


@pytest.mark.parametrize("content_type", ["", " ", "text/\x1b[31mred", "a/" + "b" * 300])
def test_a_content_type_parameter_that_could_not_be_served_is_refused(
    client: TestClient, make_settings: Callable[..., Settings], content_type: str
) -> None:
    response = upload(client, "ct", b"x", content_type=content_type)
    assert_problem(response, 400, "invalid_request")
    assert ledger_state(make_settings()) == (0, [])


def test_form_without_file_field_is_refused(client: TestClient, make_settings: Any) -> None:
    response = client.post(
        "/v1/objects", params={"name": "f"}, data={"other": "x"}, files={"x": ("a", b"b")}
    )
    assert_problem(response, 400, "invalid_request")


def test_large_object_goes_up_in_parts(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(MULTIPART_THRESHOLD_BYTES=5 * MIB, MULTIPART_PART_BYTES=5 * MIB)
    data = os.urandom(11 * MIB + 3)
    with running(settings) as client:
        record = upload(client, "big.bin", data, wait=30).json()
        events = client.app.state.objects  # noqa: F841 - the app is alive while we look
    assert record["state"] == "verified"
    parts = [hashlib.md5(data[i : i + 5 * MIB]).hexdigest() for i in range(0, len(data), 5 * MIB)]
    engine = make_engine(settings.DATABASE_URL)
    with make_sessionmaker(engine)() as session:
        row = repository.get_object(session, "default", record["id"])
        actions = [e.action for e in repository.events_for(session, record["id"])]
    engine.dispose()
    assert row is not None and row.etag == multipart_etag(parts)
    assert actions == [
        "create_multipart",
        "upload_part",
        "upload_part",
        "upload_part",
        "complete_multipart",
        "head",
    ]
    assert hashlib.sha256(httpx.get(record["url"]).content).hexdigest() == record["sha256"]


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("Content-MD5", base64.b64encode(hashlib.md5(b"other").digest()).decode()),
        (
            "Content-Digest",
            "sha-256=:" + base64.b64encode(hashlib.sha256(b"other").digest()).decode() + ":",
        ),
    ],
)
def test_digest_mismatch_keeps_nothing(
    client: TestClient, make_settings: Callable[..., Settings], header: str, value: str
) -> None:
    response = upload(client, "d.txt", b"payload", headers={header: value})
    assert_problem(response, 400, "digest_mismatch")
    assert ledger_state(make_settings()) == (0, [])


def test_matching_digests_are_accepted(client: TestClient) -> None:
    data = b"payload"
    headers = {
        "Content-MD5": base64.b64encode(hashlib.md5(data).digest()).decode(),
        "Content-Digest": "sha-256=:"
        + base64.b64encode(hashlib.sha256(data).digest()).decode()
        + ":",
    }
    assert upload(client, "ok.txt", data, headers=headers, wait=10).status_code == 201


def test_malformed_digest_is_a_clear_400(client: TestClient) -> None:
    assert_problem(
        upload(client, "m.txt", b"x", headers={"Content-MD5": "!!"}), 400, "invalid_request"
    )


def test_too_large_is_413_and_keeps_nothing(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(MAX_OBJECT_BYTES=10)
    with running(settings) as client:
        assert_problem(upload(client, "big", b"x" * 11), 413, "too_large")

        def chunked() -> Iterator[bytes]:  # no Content-Length: caught while streaming
            yield b"x" * 6
            yield b"x" * 6

        response = client.post("/v1/objects", params={"name": "big2"}, content=chunked())
        assert_problem(response, 413, "too_large")
        assert upload(client, "fits", b"x" * 10, wait=10).status_code == 201
    rows, spool = ledger_state(settings)
    assert rows == 1 and spool == []


def test_spool_full_is_503_with_retry_after(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(SPOOL_MAX_BYTES=5, MAX_OBJECT_BYTES=5)
    with running(settings, run_worker=False) as client:
        assert upload(client, "a", b"12345").status_code == 202
        body = assert_problem(upload(client, "b", b"1"), 503, "overloaded")
        assert "spool" in body["detail"]
        response = upload(client, "b", b"1")
        assert int(response.headers["retry-after"]) > 0
    assert ledger_state(settings)[0] == 1


def test_a_live_name_is_409(client: TestClient) -> None:
    assert upload(client, "same", b"1", wait=10).status_code == 201
    assert_problem(upload(client, "same", b"2"), 409, "name_taken")


@pytest.mark.parametrize("name", ["", "/lead", "a//b", "a/../b", ".", "ctl\x01", "x" * 1025])
def test_bad_names_are_400_before_anything_is_stored(
    client: TestClient, make_settings: Callable[..., Settings], name: str
) -> None:
    assert_problem(upload(client, name, b"data"), 400, "invalid_name")
    assert ledger_state(make_settings()) == (0, [])


def test_missing_name_is_invalid_name(client: TestClient) -> None:
    assert_problem(client.post("/v1/objects", content=b"x"), 400, "invalid_name")


def test_listing_filters_and_pages(client: TestClient) -> None:
    ids = [upload(client, f"list/{i}", b"x", wait=10).json()["id"] for i in range(5)]
    first = client.get("/v1/objects", params={"limit": 2, "state": "verified"}).json()
    assert [item["id"] for item in first["items"]] == ids[::-1][:2]
    second = client.get("/v1/objects", params={"limit": 2, "cursor": first["next_cursor"]}).json()
    third = client.get("/v1/objects", params={"limit": 2, "cursor": second["next_cursor"]}).json()
    seen = [item["id"] for page in (first, second, third) for item in page["items"]]
    assert seen == ids[::-1] and third["next_cursor"] is None
    assert client.get("/v1/objects", params={"state": "failed"}).json()["items"] == []
    assert_problem(client.get("/v1/objects", params={"cursor": "garbage"}), 400, "invalid_request")
    assert_problem(client.get("/v1/objects", params={"state": "odd"}), 422, "invalid_request")
    assert_problem(client.get("/v1/objects", params={"limit": 0}), 422, "invalid_request")


def test_unknown_object_and_route_are_problems(client: TestClient) -> None:
    assert_problem(client.get("/v1/objects/nope"), 404, "not_found")
    assert_problem(client.get("/v2/nothing"), 404, "not_found")
    assert_problem(client.delete("/healthz"), 405, "method_not_allowed")


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        # found by schemathesis: Starlette named only the first route of the path
        ("OPTIONS", "/v1/objects/0", "DELETE, GET"),
        ("PUT", "/v1/objects/0", "DELETE, GET"),
        ("PATCH", "/v1/objects", "GET, POST"),
        ("DELETE", "/healthz", "GET"),
    ],
)
def test_a_405_allows_every_method_of_the_path(
    client: TestClient, method: str, path: str, allow: str
) -> None:
    response = client.request(method, path)
    assert_problem(response, 405, "method_not_allowed")
    assert response.headers["allow"] == allow


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ok", "ledger": "ok", "store": "ok"}


def test_readiness_fails_when_the_store_is_gone(make_settings: Callable[..., Settings]) -> None:
    from tests.conftest import free_port

    settings = make_settings(S3_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}", CREATE_BUCKET=False)
    with running(settings, run_worker=False) as client:
        assert_problem(client.get("/readyz"), 503, "not_ready")


def test_a_permanent_store_answer_fails_the_object(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(BUCKET="bucket-that-does-not-exist", CREATE_BUCKET=False)
    with running(settings) as client:
        record = upload(client, "r", b"x", wait=10).json()
    assert record["state"] == "failed" and record["url"] is None
    assert record["error"]["code"] == "store_rejected"
    assert "NoSuchBucket" in record["error"]["message"]
    assert ledger_state(settings)[1] == []  # the spool copy is released


def test_the_verifier_resumes_from_the_ledger_and_a_missing_spool_fails(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    with running(settings, run_worker=False) as client:
        kept = upload(client, "kept", b"kept bytes").json()
        lost = upload(client, "lost", b"lost bytes").json()
        assert kept["state"] == lost["state"] == "pending"
    spool = ledger_state(settings)[1]
    assert len(spool) == 2
    engine = make_engine(settings.DATABASE_URL)
    with make_sessionmaker(engine)() as session:
        row = repository.get_object(session, "default", lost["id"])
        assert row is not None
        Path(row.spool_path).unlink()
    engine.dispose()
    with running(settings) as client:
        kept = client.get(f"/v1/objects/{kept['id']}", params={"wait": 10}).json()
        lost = client.get(f"/v1/objects/{lost['id']}", params={"wait": 10}).json()
    assert kept["state"] == "verified" and httpx.get(kept["url"]).content == b"kept bytes"
    assert lost["state"] == "failed" and lost["error"]["code"] == "spool_missing"
    assert lost["url"] is None
    assert ledger_state(settings)[1] == []


def multipart_body(boundary: str, part_headers: str, data: bytes, close: bool = True) -> bytes:
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="f"\r\n'
    body = (head + part_headers + "\r\n").encode() + data
    return body + (f"\r\n--{boundary}--\r\n".encode() if close else b"")


def post_form(client: TestClient, name: str, boundary: str, body: bytes) -> httpx.Response:
    return client.post(
        "/v1/objects",
        params={"name": name},
        content=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )


@pytest.mark.parametrize(
    "content_type",
    ["text/plain\x00x", "text/plain\x01", "text/\x1b[31mred", "image/\xe9t\xe9", "a/" + "b" * 300],
)
def test_content_types_a_client_could_not_read_back_are_refused(
    client: TestClient, make_settings: Callable[..., Settings], content_type: str
) -> None:
    body = multipart_body("B", f"Content-Type: {content_type}\r\n", b"DATA")
    assert_problem(post_form(client, "ct", "B", body), 400, "invalid_request")
    assert ledger_state(make_settings()) == (0, [])


def test_a_long_raw_content_type_is_refused(client: TestClient) -> None:
    response = upload(client, "ct", b"x", headers={"Content-Type": "a/" + "b" * 300})
    assert_problem(response, 400, "invalid_request")


def test_an_overlong_boundary_is_a_400(client: TestClient) -> None:
    boundary = "b" * 257
    body = multipart_body(boundary, "", b"x")
    assert_problem(post_form(client, "b", boundary, body), 400, "invalid_request")


def test_a_truncated_multipart_body_is_not_stored(
    client: TestClient, make_settings: Callable[..., Settings]
) -> None:
    body = multipart_body("BND", "Content-Type: image/png\r\n", os.urandom(100_000), close=False)
    response = post_form(client, "cut.png", "BND", body)
    assert_problem(response, 400, "invalid_request")
    assert "closing boundary" in response.json()["detail"]
    assert ledger_state(make_settings()) == (0, [])


def test_invalid_utf8_in_a_name_is_refused(client: TestClient) -> None:
    response = client.post("/v1/objects?name=report%FF.txt", content=b"x")
    assert_problem(response, 400, "invalid_name")


@pytest.mark.parametrize(
    ("header", "value", "code"),
    [
        ("Content-Digest", "garbage", "invalid_request"),
        ("Content-MD5", "", "invalid_request"),
        (
            "Content-Digest",
            "sha-256=:" + base64.b64encode(hashlib.sha256(b"other").digest()).decode() + ":, "
            "sha-256=:" + base64.b64encode(hashlib.sha256(b"payload").digest()).decode() + ":",
            "digest_mismatch",
        ),
    ],
)
def test_digest_headers_are_checked_whole(
    client: TestClient, header: str, value: str, code: str
) -> None:
    assert_problem(upload(client, "d", b"payload", headers={header: value}), 400, code)


def test_digest_parameters_and_unknown_algorithms_are_allowed(client: TestClient) -> None:
    sha = base64.b64encode(hashlib.sha256(b"payload").digest()).decode()
    value = f"sha-512=:{base64.b64encode(bytes(64)).decode()}:, sha-256=:{sha}:;note=1"
    response = upload(client, "d", b"payload", headers={"Content-Digest": value}, wait=10)
    assert response.status_code == 201, response.text


def test_a_trailing_slash_is_a_404_problem_not_a_redirect(client: TestClient) -> None:
    assert_problem(client.get("/v1/objects/"), 404, "not_found")


def test_chunked_uploads_share_the_spool_limit(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(SPOOL_MAX_BYTES=10, MAX_OBJECT_BYTES=10)
    with running(settings, run_worker=False) as client:
        assert upload(client, "a", b"x" * 6).status_code == 202

        def chunked() -> Iterator[bytes]:
            yield b"x" * 3
            yield b"x" * 3

        response = client.post("/v1/objects", params={"name": "b"}, content=chunked())
        assert_problem(response, 503, "overloaded")
    rows, spool = ledger_state(settings)
    assert rows == 1 and len(spool) == 1
