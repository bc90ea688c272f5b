"""The kill test: SIGKILL the service while objects are pending, restart it, and
every accepted object still ends verified with its exact bytes behind its URL.

The verifier runs with one slot before the kill, so a backlog builds up while
eight clients keep uploading; the kill lands with uploads in flight, rows
pending, and (usually) one row leased by the dead process.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.service_process import (
    ServiceProcess,
    ServiceRunner,
    fetch,
    wait_settled,
    wait_until_gone,
)

MIB = 1024 * 1024
FIRST_BATCH = 10
CLIENTS = 8
MIN_PENDING = 20
MAX_FLOOD_OBJECTS = 300
MAX_FLOOD_SECONDS = 60.0
# A row leased by the killed process waits for its lease (LEASE_SECONDS, 30 s) to expire.
SETTLE_AFTER_RESTART_SECONDS = 120.0


@dataclass
class Sent:
    name: str
    size: int
    sha256: str
    record: dict[str, Any] | None = None  # the 201/202 answer: the object was accepted
    status: int | None = None  # any other answer: refused
    error: str | None = None  # no answer at all: maybe accepted, maybe not


@dataclass
class Flood:
    """Uploads from several client threads, until stopped or out of budget."""

    base_url: str
    seed: int
    sent: list[Sent] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _next(self) -> tuple[Sent, bytes] | None:
        with self.lock:
            if self.stop.is_set() or len(self.sent) >= MAX_FLOOD_OBJECTS:
                return None
            index = len(self.sent)
            rng = random.Random(self.seed + index)
            body = rng.randbytes(rng.randint(1 * MIB, 4 * MIB))
            sent = Sent(f"flood/{index:04d} ü+%.bin", len(body), hashlib.sha256(body).hexdigest())
            self.sent.append(sent)
            return sent, body

    def client(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=30.0) as client:
            while (item := self._next()) is not None:
                sent, body = item
                try:
                    response = client.post(
                        "/v1/objects",
                        params={"name": sent.name},
                        content=body,
                        headers={"Content-Type": "application/octet-stream"},
                    )
                except httpx.HTTPError as exc:
                    sent.error = repr(exc)
                    continue
                if response.status_code in (201, 202):
                    sent.record = response.json()
                else:
                    sent.status = response.status_code
                    sent.error = response.text


def pending_count(client: httpx.Client) -> int:
    response = client.get("/v1/objects", params={"state": "pending", "limit": 1000})
    assert response.status_code == 200, response.text
    return len(response.json()["items"])


def all_records(client: httpx.Client) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 1000}
        if cursor is not None:
            params["cursor"] = cursor
        page = client.get("/v1/objects", params=params).json()
        records.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return records


def assert_serves(url: str, size: int, sha256: str) -> None:
    status, got_size, got_sha256, _ = fetch(url)
    assert status == 200, f"dead link {url}: {status}"
    assert (got_size, got_sha256) == (size, sha256), f"wrong bytes behind {url}"


def upload_first_batch(client: httpx.Client, seed: int) -> list[Sent]:
    """Objects verified (and their URLs fetched once) before the kill."""
    batch: list[Sent] = []
    rng = random.Random(seed)
    for index in range(FIRST_BATCH):
        body = rng.randbytes(rng.randint(1, 1 * MIB))
        sent = Sent(f"first/{index:02d} é.bin", len(body), hashlib.sha256(body).hexdigest())
        response = client.post("/v1/objects", params={"name": sent.name, "wait": 30}, content=body)
        assert response.status_code == 201, response.text
        sent.record = response.json()
        assert sent.record["url"] is not None
        assert_serves(sent.record["url"], sent.size, sent.sha256)
        batch.append(sent)
    return batch


def flood_then_kill(service: ServiceProcess, client: httpx.Client, seed: int) -> Flood:
    """Uploads from many clients until a backlog is pending, then SIGKILL mid-flood."""
    flood = Flood(service.base_url, seed)
    pool = ThreadPoolExecutor(CLIENTS, thread_name_prefix="flood")
    clients: list[Future[None]] = []
    try:
        clients = [pool.submit(flood.client) for _ in range(CLIENTS)]
        deadline = time.monotonic() + MAX_FLOOD_SECONDS
        pending = 0
        while time.monotonic() < deadline and not all(c.done() for c in clients):
            pending = pending_count(client)
            if pending >= MIN_PENDING:
                break
            time.sleep(0.1)
        assert pending >= MIN_PENDING, (
            f"only {pending} pending after {len(flood.sent)} uploads: no backlog to kill"
        )
        # At once, with uploads still in flight.
        service.kill()
    finally:
        flood.stop.set()
        pool.shutdown(wait=True)
        for future in clients:
            future.result()
    print(f"killed with {pending} pending, {len(flood.sent)} uploads started")
    return flood


@pytest.mark.timeout(400)
def test_sigkill_with_pending_objects_loses_nothing(tmp_path: Path) -> None:
    seed = random.randrange(2**32)
    print(f"seed {seed}")
    with ServiceRunner(tmp_path / "service") as runner:
        service = runner.start({"VERIFIED_URLS_WORKER_CONCURRENCY": "1"})
        assert service.store_pid is not None, "no embedded store child process found"
        with httpx.Client(base_url=service.base_url, timeout=60.0) as client:
            # URLs handed out before the kill: a restart must not turn any into a dead link.
            handed_out = upload_first_batch(client, seed)
            flood = flood_then_kill(service, client, seed + 1_000_000)

        assert wait_until_gone(service.store_pid, 10.0), (
            f"embedded store (pid {service.store_pid}) outlived its SIGKILLed parent"
        )

        accepted = [s for s in flood.sent if s.record is not None]
        unanswered = [s for s in flood.sent if s.record is None]
        assert len(accepted) >= MIN_PENDING
        # Only the kill may cut an upload short; any refusal is a finding.
        assert [(s.name, s.status, s.error) for s in unanswered if s.status is not None] == []

        restarted = runner.start()
        with httpx.Client(base_url=restarted.base_url, timeout=60.0) as client:
            deadline = time.monotonic() + SETTLE_AFTER_RESTART_SECONDS
            for sent in [*handed_out, *accepted]:
                assert sent.record is not None
                left = max(1.0, deadline - time.monotonic())
                record = wait_settled(client, sent.record["id"], left)
                assert record["state"] == "verified", record
                assert (record["size"], record["sha256"]) == (sent.size, sent.sha256)
                if sent.name.startswith("first/"):
                    assert record["url"] == sent.record["url"]
                assert_serves(record["url"], sent.size, sent.sha256)

            # Uploads cut off by the kill may or may not have been recorded; a recorded
            # one is the service's to finish like any other.
            by_name = {r["name"]: r for r in all_records(client)}
            for sent in unanswered:
                listed = by_name.get(sent.name)
                if listed is None:
                    continue
                record = wait_settled(client, listed["id"], 30.0)
                assert record["state"] == "verified", record
                assert (record["size"], record["sha256"]) == (sent.size, sent.sha256)
                assert_serves(record["url"], sent.size, sent.sha256)

            assert pending_count(client) == 0
            failed = client.get("/v1/objects", params={"state": "failed", "limit": 1000})
            assert failed.json()["items"] == []
            print(
                f"{len(accepted)} accepted, {len(unanswered)} cut off by the kill, "
                f"{sum(s.name in by_name for s in unanswered)} of those recorded"
            )
