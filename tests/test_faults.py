"""The cases the service must pass against a misbehaving store: the service runs
for real (its app, its verifier), the store is moto's server behind the
fault-injecting proxy, and the faults are scripted per key."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.chaos import ChaosProxy
from service.ledger import repository
from service.ledger.database import make_engine, make_sessionmaker
from service.ledger.models import EventRow
from service.settings import Settings
from tests.conftest import s3_client

MIB = 1024 * 1024


@pytest.fixture
def proxy(moto_endpoint: str, tmp_path: Path) -> Iterator[ChaosProxy]:
    with ChaosProxy(moto_endpoint, profile="none", seed=1, log_path=tmp_path / "proxy.jsonl") as p:
        yield p


@pytest.fixture
def settings_through_proxy(
    make_settings: Callable[..., Settings], proxy: ChaosProxy
) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {"S3_ENDPOINT_URL": proxy.url, "RETRY_BASE_SECONDS": 0.02}
        values.update(overrides)
        return make_settings(**values)

    return make


@contextmanager
def running(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        yield client


def upload(client: TestClient, name: str, data: bytes, wait: float = 0) -> dict[str, Any]:
    response = client.post(
        "/v1/objects",
        params={"name": name, "wait": wait},
        content=data,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert response.status_code in (201, 202), response.text
    record: dict[str, Any] = response.json()
    if record["state"] != "verified":
        assert record["url"] is None
    return record


def settle(client: TestClient, record: dict[str, Any], seconds: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while record["state"] == "pending" and time.monotonic() < deadline:
        record = client.get(f"/v1/objects/{record['id']}", params={"wait": 5}).json()
        if record["state"] == "pending":
            assert record["url"] is None
    return record


def events(settings: Settings, object_id: str) -> list[EventRow]:
    engine = make_engine(settings.DATABASE_URL)
    try:
        with make_sessionmaker(engine)() as session:
            return list(repository.events_for(session, object_id))
    finally:
        engine.dispose()


def outcomes(rows: list[EventRow]) -> list[tuple[str, str, str | None]]:
    return [(e.action, e.outcome, e.error_code) for e in rows]


def assert_serves(record: dict[str, Any], data: bytes) -> None:
    assert record["state"] == "verified", record
    fetched = httpx.get(record["url"])
    assert fetched.status_code == 200 and fetched.content == data


def store_keys(moto_endpoint: str, bucket: str) -> list[str]:
    answer = s3_client(moto_endpoint).list_objects_v2(Bucket=bucket)
    return [item["Key"] for item in answer.get("Contents", [])]


def test_two_403_puts_and_a_500_head_end_verified(
    settings_through_proxy: Callable[..., Settings], proxy: ChaosProxy, bucket: str
) -> None:
    settings = settings_through_proxy()
    proxy.add_script(key=f"{bucket}/three.txt", fault="error_403", method="PUT", times=2)
    proxy.add_script(key=f"{bucket}/three.txt", fault="error_500", method="HEAD", times=1)
    with running(settings) as client:
        record = settle(client, upload(client, "three.txt", b"abc"))
        listing = client.get("/v1/objects").json()["items"]
    assert_serves(record, b"abc")
    assert [item["id"] for item in listing] == [record["id"]]
    assert record["store_attempts"] == 3 and record["checks"] == 1 and record["rounds"] == 1
    assert outcomes(events(settings, record["id"])) == [
        ("put", "error", "AccessDenied"),
        ("put", "error", "AccessDenied"),
        ("put", "ok", None),
        ("head", "error", "500"),
        ("head", "ok", None),
    ]


def test_fifty_uploads_through_503s_and_429s_all_verify(
    settings_through_proxy: Callable[..., Settings], proxy: ChaosProxy, bucket: str
) -> None:
    settings = settings_through_proxy()
    names = [f"slow/{i}" for i in range(50)]
    for name in names:
        proxy.add_script(key=f"{bucket}/{name}", fault="error_503", method="PUT", times=6)
        proxy.add_script(key=f"{bucket}/{name}", fault="error_429", method="HEAD", times=3)
    with running(settings) as client, ThreadPoolExecutor(max_workers=50) as pool:
        records = list(pool.map(lambda n: settle(client, upload(client, n, n.encode())), names))
    for name, record in zip(names, records, strict=True):
        assert_serves(record, name.encode())
        assert record["store_attempts"] == 7 and record["rounds"] == 1
    assert proxy.stats()["scripted"] == {"error_503": 300, "error_429": 150}


def test_a_put_answered_after_the_read_timeout_ends_verified_once(
    settings_through_proxy: Callable[..., Settings],
    proxy: ChaosProxy,
    bucket: str,
    moto_endpoint: str,
) -> None:
    settings = settings_through_proxy(STORE_READ_TIMEOUT_SECONDS=1)
    data = os.urandom(2_700_000)
    proxy.add_script(
        key=f"{bucket}/late-answer.bin", fault="slow_answer", method="PUT", times=1, seconds=2.5
    )
    with running(settings) as client:
        record = settle(client, upload(client, "late-answer.bin", data))
    assert_serves(record, data)
    assert store_keys(moto_endpoint, bucket) == ["late-answer.bin"]
    seen = outcomes(events(settings, record["id"]))
    assert seen[0] == ("put", "error", "ReadTimeoutError")
    # the retry finds the object already there (If-None-Match) and checks it
    assert seen[1] == ("put", "precondition_failed", "PreconditionFailed")
    assert seen[-1] == ("head", "ok", None)


def test_a_lost_put_is_stored_again_from_the_spool(
    settings_through_proxy: Callable[..., Settings], proxy: ChaosProxy, bucket: str
) -> None:
    settings = settings_through_proxy()
    proxy.add_script(key=f"{bucket}/lost.bin", fault="lost_put", method="PUT", times=1)
    with running(settings) as client:
        record = settle(client, upload(client, "lost.bin", b"lost once"))
    assert_serves(record, b"lost once")
    assert record["rounds"] == 2 and record["store_attempts"] == 2
    assert outcomes(events(settings, record["id"])) == [
        ("put", "ok", None),
        ("head", "not_found", "404"),
        ("put", "ok", None),
        ("head", "ok", None),
    ]


def test_an_object_invisible_for_20_seconds_stays_pending_then_verifies(
    settings_through_proxy: Callable[..., Settings], proxy: ChaosProxy, bucket: str, tmp_path: Path
) -> None:
    settings = settings_through_proxy(PROFILE="eventual", CHECKS=11, CHECK_WINDOW_SECONDS=40)
    key = f"{bucket}/late.txt"
    proxy.add_script(key=key, fault="late_visibility", seconds=20)
    with running(settings) as client:
        record = upload(client, "late.txt", b"late but there")
        started = time.monotonic()
        while time.monotonic() - started < 15:
            polled = client.get(f"/v1/objects/{record['id']}").json()
            assert polled["state"] == "pending" and polled["url"] is None
            time.sleep(1)
        record = settle(client, record, seconds=60)
    assert_serves(record, b"late but there")
    assert record["rounds"] == 1 and record["checks"] >= 6
    log = [json.loads(line) for line in (tmp_path / "proxy.jsonl").read_text().splitlines()]
    mine = [entry["kind"] for entry in log if entry["key"] == "late.txt"]
    assert mine[0] == "put", "nothing may be probed before the PUT"


def test_a_corrupted_put_is_never_verified_and_stored_again(
    settings_through_proxy: Callable[..., Settings], proxy: ChaosProxy, bucket: str
) -> None:
    settings = settings_through_proxy()
    data = os.urandom(100_000)
    proxy.add_script(key=f"{bucket}/flipped.bin", fault="corrupt", method="PUT", times=1)
    with running(settings) as client:
        record = settle(client, upload(client, "flipped.bin", data))
    assert_serves(record, data)
    assert record["rounds"] == 2
    seen = outcomes(events(settings, record["id"]))
    assert seen[:2] == [("put", "ok", None), ("head", "mismatch", None)]
    assert seen[-1] == ("head", "ok", None)


def test_a_corrupted_part_of_a_multipart_upload_is_stored_again(
    settings_through_proxy: Callable[..., Settings], proxy: ChaosProxy, bucket: str
) -> None:
    settings = settings_through_proxy(
        MULTIPART_THRESHOLD_BYTES=5 * MIB, MULTIPART_PART_BYTES=5 * MIB
    )
    data = os.urandom(11 * MIB)
    proxy.add_script(
        key=f"{bucket}/parts.bin", fault="corrupt", method="UPLOAD_PART", part=2, times=1
    )
    with running(settings) as client:
        record = settle(client, upload(client, "parts.bin", data), seconds=60)
    assert_serves(record, data)
    assert record["rounds"] == 2
    actions = [(e.action, e.outcome) for e in events(settings, record["id"])]
    # the multipart ETag is not ours, so the bytes were read back, and differed
    assert ("get", "mismatch") in actions
    assert hashlib.sha256(httpx.get(record["url"]).content).hexdigest() == record["sha256"]


def test_zero_bytes_then_nonempty_both_verify(
    settings_through_proxy: Callable[..., Settings],
) -> None:
    with running(settings_through_proxy()) as client:
        empty = upload(client, "zero", b"")
        full = upload(client, "one", b"1")
        empty, full = settle(client, empty), settle(client, full)
    assert_serves(empty, b"")
    assert_serves(full, b"1")


def test_64_uploads_with_a_busy_verifier_lose_nothing(
    settings_through_proxy: Callable[..., Settings],
    proxy: ChaosProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = settings_through_proxy(WORKER_CONCURRENCY=4)
    proxy_slow = ChaosProxy(proxy.upstream_url, profile="none", rates={"latency_seconds": 0.05})
    with proxy_slow, caplog.at_level(logging.WARNING):
        settings = settings.model_copy(update={"S3_ENDPOINT_URL": proxy_slow.url})
        names = [f"busy/{i}" for i in range(64)]
        with running(settings) as client, ThreadPoolExecutor(max_workers=64) as pool:
            records = list(pool.map(lambda n: upload(client, n, n.encode() * 100), names))
            settled = list(pool.map(lambda r: settle(client, r, seconds=60), records))
        for name, record in zip(names, settled, strict=True):
            assert_serves(record, name.encode() * 100)
    assert "Connection pool is full" not in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
