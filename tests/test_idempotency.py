"""Idempotency-Key on uploads: a retry answers with the first upload's object,
another upload under the same key is refused, and racing duplicates make one
object. On SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.test_api import assert_problem, ledger_state, running, upload


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with running(settings) as client:
        yield client


def keyed(client: TestClient, name: str, data: bytes, key: str, **params: Any) -> httpx.Response:
    headers = {"Content-Type": "text/plain", "Idempotency-Key": key}
    return upload(client, name, data, headers=headers, **params)


def test_a_retry_answers_with_the_same_object(client: TestClient, settings: Settings) -> None:
    first = keyed(client, "a.txt", b"hello", "k-1", wait=10)
    assert first.status_code == 201, first.text
    assert "idempotent-replayed" not in first.headers
    again = keyed(client, "a.txt", b"hello", "k-1", wait=10)
    assert again.status_code == 201, again.text
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["location"] == first.headers["location"]
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["url"] == first.json()["url"]
    rows, spool = ledger_state(settings)
    assert rows == 1 and spool == []


def test_a_retry_of_a_pending_upload_is_not_name_taken(
    make_settings: Callable[..., Settings],
) -> None:
    # no verifier: the first upload stays pending, holding its name
    settings = make_settings()
    with running(settings, run_worker=False) as client:
        first = keyed(client, "p.txt", b"x", "k-pending")
        assert first.status_code == 202 and first.json()["state"] == "pending"
        again = keyed(client, "p.txt", b"x", "k-pending")
        assert again.status_code == 202, again.text
        assert again.json()["id"] == first.json()["id"]
        # without the key it is another upload of a taken name
        assert_problem(upload(client, "p.txt", b"x"), 409, "name_taken")
    rows, spool = ledger_state(settings)
    assert rows == 1 and len(spool) == 1  # the first upload's copy only


@pytest.mark.parametrize(
    ("name", "data", "content_type"),
    [
        ("a.txt", b"other bytes", "text/plain"),
        ("b.txt", b"hello", "text/plain"),
        ("a.txt", b"hello", "application/json"),
    ],
    ids=["other-body", "other-name", "other-content-type"],
)
def test_the_key_with_another_upload_is_422_and_keeps_nothing(
    client: TestClient, settings: Settings, name: str, data: bytes, content_type: str
) -> None:
    assert keyed(client, "a.txt", b"hello", "k-2", wait=10).status_code == 201
    other = upload(
        client, name, data, headers={"Content-Type": content_type, "Idempotency-Key": "k-2"}
    )
    assert_problem(other, 422, "idempotency_key_reused")
    rows, spool = ledger_state(settings)
    assert rows == 1 and spool == []


def test_keys_belong_to_a_tenant(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(API_KEYS="acme:acme-secret-0123456789,globex:globex-secret-012345")
    with running(settings) as client:
        for key in ("acme-secret-0123456789", "globex-secret-012345"):
            answer = upload(
                client,
                "same.txt",
                b"hi",
                headers={
                    "Authorization": f"Bearer {key}",
                    "Content-Type": "text/plain",
                    "Idempotency-Key": "shared-key",
                },
            )
            assert answer.status_code == 202, answer.text
            assert "idempotent-replayed" not in answer.headers


@pytest.mark.parametrize("key", ["", " lead", "tab\tin", "é", "x" * 256])
def test_a_malformed_key_is_a_400(client: TestClient, settings: Settings, key: str) -> None:
    answer = client.post(
        "/v1/objects",
        params={"name": "m.txt"},
        content=b"m",
        headers={"Content-Type": "text/plain", "Idempotency-Key": key.encode("utf-8")},
    )
    assert_problem(answer, 400, "invalid_request")
    assert ledger_state(settings) == (0, [])


def test_the_longest_key_is_accepted(client: TestClient) -> None:
    assert keyed(client, "long.txt", b"l", "k" * 255).status_code == 202


def test_concurrent_duplicates_make_exactly_one_object(settings: Settings) -> None:
    app = create_app(settings)

    async def race() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://test") as client,
        ):
            return await asyncio.gather(
                *(
                    client.post(
                        "/v1/objects",
                        params={"name": "race.bin"},
                        content=b"r" * 100_000,
                        headers={
                            "Content-Type": "application/octet-stream",
                            "Idempotency-Key": "race-key",
                        },
                    )
                    for _ in range(12)
                )
            )

    answers = asyncio.run(race())
    # a replay answers with the object as it stands: verified by then, or not
    for answer in answers:
        assert "state" in answer.json(), answer.text
        expected = 201 if answer.json()["state"] == "verified" else 202
        assert answer.status_code == expected, answer.text
    assert len({a.json()["id"] for a in answers}) == 1
    assert sum(a.headers.get("idempotent-replayed") == "true" for a in answers) == 11
    rows, _ = ledger_state(settings)
    assert rows == 1


def test_a_retry_whose_first_upload_commits_between_the_two_looks(
    client: TestClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first upload commits after the retry looked its key up but before it
    looked its name up: the name is held by the retry's own object, no conflict
    (this raced as a 409 name_taken under concurrent duplicates)."""
    first = keyed(client, "between.bin", b"between", "between-key")
    assert first.status_code in (201, 202)
    from service import objects
    from service.ledger import repository

    real = repository.object_by_idempotency_key
    calls: list[int] = []

    def not_committed_yet(*args: Any) -> Any:
        calls.append(1)
        return None if len(calls) == 1 else real(*args)

    monkeypatch.setattr(objects.repository, "object_by_idempotency_key", not_committed_yet)
    retry = keyed(client, "between.bin", b"between", "between-key")
    assert retry.status_code in (201, 202), retry.text
    assert retry.json()["id"] == first.json()["id"]
    assert retry.headers["idempotent-replayed"] == "true"
    other = keyed(client, "between.bin", b"other bytes", "another-key")
    assert other.status_code == 409 and other.json()["code"] == "name_taken"
