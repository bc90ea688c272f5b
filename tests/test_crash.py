"""Many processes, SIGKILL, nothing lost: two API processes and three workers on
one PostgreSQL ledger, the store behind the fault-injecting proxy.

While client threads upload a few hundred objects through both API processes, a
chaos loop SIGKILLs one process every few seconds (mostly a worker holding a
lease at that very moment, sometimes an API process) and restarts it. Uploads
cut off by a kill are retried on the other API process. Afterwards every
accepted object must be `verified` (its URL serving its exact bytes, straight
from moto) or `failed` with a reason; none pending, none lost; moto holds no key
that a verified or failed row does not account for; and, read from the proxy's
own log rather than from the service's events, no key was ever being stored by
two requests at once, which is what a worker still storing after its lease was
taken over would look like. (The log's `time` is measured at the start, not
assumed: as written, the proxy stamps a request's arrival, and `duration_seconds`
runs to its answer.)
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy.engine import make_url

from tests.conftest import free_port, new_pg_database, s3_client
from tests.service_process import fetch

SERVICE_BIN = Path(sys.executable).with_name("verified-urls")
HOST = socket.gethostname()

OBJECTS = 300
MIN_OBJECT_BYTES = 1024
MAX_OBJECT_BYTES = 256 * 1024
CLIENT_THREADS = 4
UPLOAD_SECONDS = 75.0  # uploads are paced over this span, so that kills meet work
UPLOAD_GIVE_UP_SECONDS = 90.0  # per object, across retries on both API processes
KILL_INTERVAL_SECONDS = 3.5
API_KILL_EVERY = 4  # every 4th kill is an API process, the others workers
FIND_WORK_SECONDS = 3.0  # how long a kill waits for its target to have work in flight
MIN_IN_FLIGHT_KILLS = 3
SETTLE_SECONDS = 120.0
START_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 15.0
LOG_TAIL_LINES = 40

LEASE_SECONDS = 3
SETTINGS = {
    "LEASE_SECONDS": str(LEASE_SECONDS),
    "RETRY_BASE_SECONDS": "0.05",
    "PROFILE": "strong",
    "WORKER_CONCURRENCY": "4",
    "WORKER_POLL_SECONDS": "0.5",
    # The bucket exists; a start-up HEAD through the flaky proxy could fail the start.
    "CREATE_BUCKET": "false",
    "STORE_READ_TIMEOUT_SECONDS": "15",
}

# Requests that write an object's bytes (or make them a key), as the proxy names them.
STORE_KINDS = frozenset({"put", "upload_part", "create_multipart", "complete_multipart"})
# The log's `time` has millisecond resolution; spans closer than this are not "at once".
OVERLAP_TOLERANCE_SECONDS = 0.002


# ---------------------------------------------------------------- the proxy log


def request_span(line: dict[str, Any], time_marks: str) -> tuple[float, float]:
    """When a logged request was in the proxy: [start, end] in epoch seconds.

    `time_marks` says what the log's `time` is: "start" (the request arrived)
    or "end" (its answer went out); the test measures which (`log_time_marks`).
    """
    at = datetime.fromisoformat(line["time"]).timestamp()
    duration = float(line["duration_seconds"])
    return (at, at + duration) if time_marks == "start" else (at - duration, at)


def store_spans(
    lines: list[dict[str, Any]], bucket: str, time_marks: str
) -> dict[str, list[tuple[float, float, dict[str, Any]]]]:
    """Per key, the spans of the store requests that reached the store, by start."""
    spans: dict[str, list[tuple[float, float, dict[str, Any]]]] = defaultdict(list)
    for line in lines:
        if line["bucket"] != bucket or line["kind"] not in STORE_KINDS:
            continue
        if not line["reached_store"]:
            continue
        start, end = request_span(line, time_marks)
        spans[line["key"]].append((start, end, line))
    for key_spans in spans.values():
        key_spans.sort(key=lambda span: span[0])
    return spans


def concurrent_store_requests(
    lines: list[dict[str, Any]], bucket: str, time_marks: str
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Pairs of store requests for one key that reached the store at overlapping times."""
    overlaps: list[tuple[dict[str, Any], dict[str, Any]]] = []
    for key_spans in store_spans(lines, bucket, time_marks).values():
        latest: tuple[float, float, dict[str, Any]] | None = None
        for span in key_spans:
            if latest is not None and span[0] < latest[1] - OVERLAP_TOLERANCE_SECONDS:
                overlaps.append((latest[2], span[2]))
            if latest is None or span[1] > latest[1]:
                latest = span
    return overlaps


def _line(key: str, at: float, duration: float, **overrides: Any) -> dict[str, Any]:
    line: dict[str, Any] = {
        "time": datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds"),
        "method": "PUT",
        "kind": "put",
        "bucket": "b",
        "key": key,
        "fault": None,
        "status": 200,
        "reached_store": True,
        "duration_seconds": duration,
    }
    line.update(overrides)
    return line


@pytest.mark.parametrize("time_marks", ["start", "end"])
def test_the_overlap_check_catches_two_stores_of_one_key_at_once(time_marks: str) -> None:
    """The log check below must be able to fail: synthetic lines, both log conventions."""
    at = 1_800_000_000.0
    shift = 0.0 if time_marks == "start" else 1.0  # "end": `time` is start + duration

    def line(key: str, start: float, duration: float, **overrides: Any) -> dict[str, Any]:
        return _line(key, start + shift * duration, duration, **overrides)

    sequential = [line("k", at, 0.5), line("k", at + 0.6, 0.5, kind="put")]
    assert concurrent_store_requests(sequential, "b", time_marks) == []
    # a second worker's PUT starting while the first is still being stored
    overlapping = [line("k", at, 1.0), line("k", at + 0.5, 1.0)]
    assert len(concurrent_store_requests(overlapping, "b", time_marks)) == 1
    # nested in a long one, and a multipart part against a PUT
    nested = [line("k", at, 5.0), line("k", at + 1.0, 0.1), line("k", at + 3.0, 0.1)]
    assert len(concurrent_store_requests(nested, "b", time_marks)) == 2
    mixed = [line("k", at, 1.0), line("k", at + 0.2, 0.3, kind="upload_part")]
    assert len(concurrent_store_requests(mixed, "b", time_marks)) == 1
    # not a store step of one key at once: other keys, other buckets, reads, nothing forwarded
    unrelated = [
        line("k", at, 1.0),
        line("j", at + 0.5, 1.0),
        line("k", at + 0.5, 1.0, bucket="other"),
        line("k", at + 0.5, 1.0, kind="head", method="HEAD"),
        line("k", at + 0.5, 1.0, reached_store=False, fault="error_503"),
    ]
    assert concurrent_store_requests(unrelated, "b", time_marks) == []


# ---------------------------------------------------------------- processes


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


@dataclass
class Member:
    """One process of the cluster (an API process or a worker), restartable."""

    role: str  # "api" or "worker"
    index: int
    workdir: Path
    env: dict[str, str]
    port: int | None = None
    process: subprocess.Popen[bytes] | None = None
    logs: list[Path] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.role}-{self.index}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def command(self) -> list[str]:
        if self.role == "worker":
            return [str(SERVICE_BIN), "worker"]
        return [
            str(SERVICE_BIN),
            "serve",
            "--no-worker",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--log-level",
            "warning",
        ]

    def start(self) -> None:
        log_path = self.workdir / f"{self.name}.{len(self.logs) + 1}.log"
        self.logs.append(log_path)
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.command(),
                cwd=self.workdir,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self, timeout_seconds: float = START_TIMEOUT_SECONDS) -> None:
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            if not self.running():
                raise RuntimeError(f"{self.name} exited at start:\n{_tail(self.logs[-1])}")
            if self._ready():
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} not ready in {timeout_seconds} s:\n{_tail(self.logs[-1])}")

    def _ready(self) -> bool:
        if self.role == "worker":
            text = self.logs[-1].read_text(errors="replace")
            return f":{self.pid}:" in text and " running: " in text
        try:
            return httpx.get(self.base_url + "/healthz", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    def kill(self) -> None:
        assert self.process is not None
        if self.running():
            os.kill(self.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.running():
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            self.kill()


def start_proxy(workdir: Path, upstream: str, seed: int, log: Path) -> tuple[Member, str]:
    port = free_port()
    proxy = Member("proxy", 0, workdir, _base_env(), port)
    command = [
        str(SERVICE_BIN),
        "chaos-proxy",
        "--upstream",
        upstream,
        "--listen",
        f"127.0.0.1:{port}",
        "--profile",
        "flaky",
        "--seed",
        str(seed),
        "--log",
        str(log),
    ]
    proxy.logs.append(workdir / "proxy.log")
    with proxy.logs[0].open("wb") as output:
        proxy.process = subprocess.Popen(
            command, cwd=workdir, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while True:
        if not proxy.running():
            raise RuntimeError(f"the proxy exited at start:\n{_tail(proxy.logs[0])}")
        try:
            if httpx.get(url + "/_chaos/stats", timeout=1.0).status_code == 200:
                return proxy, url
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("the proxy did not start")
        time.sleep(0.05)


def _base_env() -> dict[str, str]:
    # Settings of the shell running the tests must not leak into the processes.
    env = {k: v for k, v in os.environ.items() if not k.startswith("VERIFIED_URLS_")}
    env.update(
        {
            "PYTHONUNBUFFERED": "1",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
        }
    )
    return env


def log_time_marks(proxy_url: str, moto: str, log: Path) -> str:
    """Whether the proxy log's `time` is a request's start or its end, measured: one
    PUT (to a bucket of its own) whose answer the proxy holds for a second."""
    bucket = f"calibrate-{random.randrange(16**8):08x}"
    s3_client(moto).create_bucket(Bucket=bucket)
    script = {
        "key": f"{bucket}/probe",
        "fault": "slow_answer",
        "method": "PUT",
        "times": 1,
        "seconds": 1.0,
    }
    assert httpx.post(proxy_url + "/_chaos/script", json=script).status_code < 300
    before = time.time()
    s3_client(proxy_url).put_object(Bucket=bucket, Key="probe", Body=b"probe")
    after = time.time()
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    (probe,) = [x for x in lines if x["bucket"] == bucket and x["kind"] == "put"]
    assert after - before >= 1.0 and probe["duration_seconds"] >= 1.0, probe
    at = datetime.fromisoformat(probe["time"]).timestamp()
    return "start" if abs(at - before) < abs(at - after) else "end"


# ---------------------------------------------------------------- uploads


@dataclass
class Upload:
    index: int
    name: str
    size: int
    sha256: str
    object_id: str | None = None  # from a 201/202 answer
    name_taken: bool = False  # 409: an earlier, cut-off attempt was recorded
    refused: str | None = None  # any other answer
    interruptions: list[str] = field(default_factory=list)  # attempts without an answer


def body_of(seed: int, index: int) -> bytes:
    rng = random.Random(seed * 1_000_003 + index)
    return rng.randbytes(rng.randint(MIN_OBJECT_BYTES, MAX_OBJECT_BYTES))


class Uploader:
    """Client threads uploading paced objects to both API processes, retrying an
    attempt cut off by a kill on the other one."""

    def __init__(self, apis: list[Member], seed: int) -> None:
        self.apis = apis
        self.seed = seed
        self.uploads: list[Upload] = []
        self.in_flight = Counter[int]()  # API index -> uploads in flight
        self._next = 0
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self.stopped = threading.Event()  # the test failed: stop early

    def _take(self) -> int | None:
        with self._lock:
            if self._next >= OBJECTS or self.stopped.is_set():
                return None
            self._next += 1
            return self._next - 1

    def client(self) -> None:
        clients = [httpx.Client(base_url=api.base_url, timeout=30.0) for api in self.apis]
        try:
            while (index := self._take()) is not None:
                due = self._started + index * UPLOAD_SECONDS / OBJECTS
                time.sleep(max(0.0, due - time.monotonic()))
                self._upload(index, clients)
        finally:
            for client in clients:
                client.close()

    def _upload(self, index: int, clients: list[httpx.Client]) -> None:
        body = body_of(self.seed, index)
        upload = Upload(
            index, f"crash/{index:03d}.bin", len(body), hashlib.sha256(body).hexdigest()
        )
        with self._lock:
            self.uploads.append(upload)
        give_up = time.monotonic() + UPLOAD_GIVE_UP_SECONDS
        attempt = 0
        while time.monotonic() < give_up and not self.stopped.is_set():
            api = (index + attempt) % len(clients)
            attempt += 1
            with self._lock:
                self.in_flight[api] += 1
            try:
                response = clients[api].post(
                    "/v1/objects",
                    params={"name": upload.name},
                    content=body,
                    headers={"Content-Type": "application/octet-stream"},
                )
            except httpx.HTTPError as exc:
                upload.interruptions.append(f"api-{api}: {exc!r}")
                time.sleep(0.1)
                continue
            finally:
                with self._lock:
                    self.in_flight[api] -= 1
            if response.status_code in (201, 202):
                upload.object_id = response.json()["id"]
                return
            if response.status_code == 409 and response.json().get("code") == "name_taken":
                upload.name_taken = True
                return
            if response.status_code == 503:  # overloaded: the answer says try again
                time.sleep(0.2)
                continue
            upload.refused = f"{response.status_code} {response.text}"
            return
        upload.refused = "no answer from either API process in time"


# ---------------------------------------------------------------- the ledger, directly


@dataclass
class Kill:
    member: str
    pid: int
    leased: list[str]  # worker kills: rows the worker held a live lease on
    uploads_in_flight: int = 0  # API kills


def psycopg_dsn(database_url: str) -> str:
    return make_url(database_url).set(drivername="postgresql").render_as_string(False)


def leases_by_pid(db: psycopg.Connection[Any]) -> dict[int, list[str]]:
    """Pending rows whose lease is live, by the pid in their lease owner (this host)."""
    held: dict[int, list[str]] = defaultdict(list)
    rows = db.execute(
        "SELECT id, lease_owner FROM objects WHERE state = 'pending' "
        "AND lease_owner LIKE %s AND lease_expires_at > now()",
        (f"{HOST}:%",),
    ).fetchall()
    for object_id, owner in rows:
        pid = owner.split(":")[-2]
        if pid.isdigit():
            held[int(pid)].append(object_id)
    return held


def taken_over_rows(db: psycopg.Connection[Any], kills: list[Kill]) -> tuple[int, int]:
    """Of the rows killed workers held, how many another worker settled (its event
    settled them), and how many there were."""
    taken, total = 0, 0
    for kill in kills:
        for object_id in kill.leased:
            total += 1
            row = db.execute(
                "SELECT worker FROM events WHERE object_id = %s ORDER BY id DESC LIMIT 1",
                (object_id,),
            ).fetchone()
            if row is not None and not str(row[0]).startswith(f"{HOST}:{kill.pid}:"):
                taken += 1
    return taken, total


def pending_count(db: psycopg.Connection[Any]) -> int:
    row = db.execute("SELECT count(*) FROM objects WHERE state = 'pending'").fetchone()
    assert row is not None
    return int(row[0])


# ---------------------------------------------------------------- chaos


def chaos(
    db: psycopg.Connection[Any],
    apis: list[Member],
    workers: list[Member],
    uploader: Uploader,
    done: threading.Event,
) -> tuple[list[Kill], int]:
    """Kills and restarts one process every KILL_INTERVAL_SECONDS until `done`.

    Returns the kills and the number of worker kills given up for want of a
    worker holding a lease."""
    kills: list[Kill] = []
    no_work = 0
    turn = 0
    next_kill = time.monotonic() + KILL_INTERVAL_SECONDS
    while not done.wait(max(0.0, next_kill - time.monotonic())):
        turn += 1
        next_kill = time.monotonic() + KILL_INTERVAL_SECONDS
        if turn % API_KILL_EVERY == 0:
            api = apis[(turn // API_KILL_EVERY) % len(apis)]
            # preferably in the middle of an upload
            give_up = time.monotonic() + FIND_WORK_SECONDS
            while uploader.in_flight[api.index] == 0 and time.monotonic() < give_up:
                time.sleep(0.002)
            kills.append(Kill(api.name, api.pid, [], uploader.in_flight[api.index]))
            api.kill()
            api.start()
            api.wait_ready()
            continue
        victim: Member | None = None
        leased: list[str] = []
        give_up = time.monotonic() + FIND_WORK_SECONDS
        while victim is None and time.monotonic() < give_up and not done.is_set():
            held = leases_by_pid(db)
            candidates = [w for w in workers if w.running() and held.get(w.pid)]
            if candidates:
                victim = max(candidates, key=lambda w: len(held[w.pid]))
                leased = held[victim.pid]
                victim.kill()  # right after the ledger said it holds leases
            else:
                time.sleep(0.02)
        if victim is None:
            no_work += 1
            continue
        kills.append(Kill(victim.name, victim.pid, leased))
        victim.start()
        victim.wait_ready()
    return kills, no_work


# ---------------------------------------------------------------- the test


@pytest.fixture
def crash_database(pg_template: str) -> Iterator[str]:
    url, drop = new_pg_database(pg_template)
    try:
        yield url
    finally:
        drop()


def all_records(api: Member) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    cursor: str | None = None
    with httpx.Client(base_url=api.base_url, timeout=30.0) as client:
        while True:
            params: dict[str, Any] = {"limit": 1000}
            if cursor is not None:
                params["cursor"] = cursor
            response = client.get("/v1/objects", params=params)
            assert response.status_code == 200, response.text
            page = response.json()
            records.extend(page["items"])
            cursor = page["next_cursor"]
            if cursor is None:
                return records


def moto_objects(moto: str, bucket: str) -> dict[str, int]:
    """Every key moto holds in `bucket`, with its size, asked directly."""
    found: dict[str, int] = {}
    paginator = s3_client(moto).get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            found[item["Key"]] = int(item["Size"])
    return found


@pytest.mark.timeout(420)
def test_sigkills_lose_nothing(
    tmp_path: Path, moto_endpoint: str, bucket: str, crash_database: str
) -> None:
    seed = random.randrange(2**31)
    started = time.monotonic()
    print(f"\nseed {seed}")
    proxy_log = tmp_path / "proxy.jsonl"
    spool = tmp_path / "spool"
    members: list[Member] = []
    proxy: Member | None = None
    failed_test = True
    try:
        proxy, proxy_url = start_proxy(tmp_path, moto_endpoint, seed, proxy_log)
        time_marks = log_time_marks(proxy_url, moto_endpoint, proxy_log)
        env = _base_env()
        env.update({f"VERIFIED_URLS_{name}": value for name, value in SETTINGS.items()})
        env.update(
            {
                "VERIFIED_URLS_DATABASE_URL": crash_database,
                "VERIFIED_URLS_SPOOL_DIR": str(spool),
                "VERIFIED_URLS_S3_ENDPOINT_URL": proxy_url,
                "VERIFIED_URLS_BUCKET": bucket,
                "VERIFIED_URLS_AWS_ACCESS_KEY_ID": "testing",
                "VERIFIED_URLS_AWS_SECRET_ACCESS_KEY": "testing",
                # handed-out URLs point at the store itself, not at the faulty path to it
                "VERIFIED_URLS_PUBLIC_BASE_URL": f"{moto_endpoint}/{bucket}",
            }
        )
        apis = [Member("api", i, tmp_path, env, free_port()) for i in range(2)]
        workers = [Member("worker", i, tmp_path, env) for i in range(3)]
        members = [*apis, *workers]
        for member in members:
            member.start()
        for member in members:
            member.wait_ready()

        with psycopg.connect(psycopg_dsn(crash_database), autocommit=True) as db:
            uploader = Uploader(apis, seed)
            done = threading.Event()
            with ThreadPoolExecutor(CLIENT_THREADS, thread_name_prefix="upload") as pool:
                clients = [pool.submit(uploader.client) for _ in range(CLIENT_THREADS)]

                def end_chaos_when_uploads_end() -> None:
                    for client in clients:
                        client.exception()
                    done.set()

                watcher = threading.Thread(target=end_chaos_when_uploads_end, daemon=True)
                watcher.start()
                try:
                    kills, no_work = chaos(db, apis, workers, uploader, done)
                except BaseException:
                    uploader.stopped.set()
                    raise
                watcher.join()
                for client in clients:
                    client.result()
            chaos_ended = time.monotonic()

            # Settle: every process is up again; all must leave pending, bounded.
            assert all(member.running() for member in members)
            deadline = time.monotonic() + SETTLE_SECONDS
            while (left := pending_count(db)) > 0 and time.monotonic() < deadline:
                time.sleep(0.25)
            settled_in = time.monotonic() - chaos_ended
            assert left == 0, f"{left} objects still pending {SETTLE_SECONDS} s after the chaos"
            taken_over = taken_over_rows(db, kills)

        # ------------------------------------------------ what the clients were told
        uploads = sorted(uploader.uploads, key=lambda u: u.index)
        assert len(uploads) == OBJECTS
        refused = [(u.name, u.refused, u.interruptions) for u in uploads if u.refused]
        assert refused == [], refused
        records = all_records(apis[0])
        by_name = {record["name"]: record for record in records}
        assert len(by_name) == len(records), "one name recorded twice"
        accepted: list[tuple[Upload, dict[str, Any]]] = []
        for upload in uploads:
            record = by_name.get(upload.name)
            # 2xx, or 409 for an attempt cut off after it was recorded: either way accepted
            assert record is not None, f"accepted object lost: {upload}"
            if upload.object_id is not None:
                assert record["id"] == upload.object_id, (upload, record)
            assert (record["size"], record["sha256"]) == (upload.size, upload.sha256), record
            accepted.append((upload, record))
        assert {record["name"] for record in records} == {u.name for u in uploads}

        # ------------------------------------------------ every one settled, served
        states = Counter(record["state"] for _, record in accepted)
        assert set(states) <= {"verified", "failed"}, states
        failed = [record for _, record in accepted if record["state"] == "failed"]
        no_reason = [record for record in failed if not (record["error"] or {}).get("code")]
        assert no_reason == [], no_reason
        failed_by_reason = Counter(record["error"]["code"] for record in failed)
        dead_or_wrong: list[str] = []
        for upload, record in accepted:
            if record["state"] != "verified":
                continue
            assert record["url"], record
            status, size, sha256, _ = fetch(record["url"])
            if (status, size, sha256) != (200, upload.size, upload.sha256):
                dead_or_wrong.append(f"{record['url']}: {status}, {size} bytes")
        assert dead_or_wrong == [], dead_or_wrong

        # ------------------------------------------------ moto, directly
        held = moto_objects(moto_endpoint, bucket)
        verified_keys = {r["key"]: r for _, r in accepted if r["state"] == "verified"}
        failed_keys = {r["key"] for r in failed}
        missing = sorted(set(verified_keys) - set(held))
        assert missing == [], f"verified but not in moto: {missing}"
        strays = sorted(set(held) - set(verified_keys) - failed_keys)
        assert strays == [], f"moto holds keys no verified or failed row accounts for: {strays}"
        wrong_size = [k for k, r in verified_keys.items() if held[k] != r["size"]]
        assert wrong_size == [], wrong_size

        # ------------------------------------------------ the proxy's log
        assert proxy is not None
        proxy.stop()
        lines = [json.loads(line) for line in proxy_log.read_text().splitlines()]
        ours = [line for line in lines if line["bucket"] == bucket]
        overlaps = concurrent_store_requests(ours, bucket, time_marks)
        assert overlaps == [], (
            f"{len(overlaps)} times two store requests of one key were in flight at once "
            f"(a worker storing after its lease was taken over): {overlaps[:5]}"
        )
        spans = store_spans(ours, bucket, time_marks)
        assert set(verified_keys) <= set(spans)  # the check saw the puts at all
        stored_again = {key: s for key, s in spans.items() if len(s) > 1}
        closest = min(
            (
                later[0] - earlier[1]
                for s in stored_again.values()
                for earlier, later in itertools.pairwise(s)
            ),
            default=None,
        )

        # ------------------------------------------------ the chaos was real
        worker_kills = [kill for kill in kills if kill.member.startswith("worker")]
        in_flight_kills = [kill for kill in worker_kills if kill.leased]
        api_kills = [kill for kill in kills if kill.member.startswith("api")]
        interrupted = [u for u in uploads if u.interruptions]
        requests = Counter(line["kind"] for line in ours)
        faults = Counter(line["fault"] for line in ours if line["fault"])
        print(
            f"log time marks the request's {time_marks}\n"
            f"kills: {len(kills)} ({len(worker_kills)} workers, {len(api_kills)} API); "
            f"worker kills with work in flight: {len(in_flight_kills)} "
            f"(leases held: {[len(k.leased) for k in in_flight_kills]}); "
            f"worker kills skipped for want of work: {no_work}; "
            f"API kills with uploads in flight: {sum(1 for k in api_kills if k.uploads_in_flight)}; "
            f"rows of killed workers settled by another worker: {taken_over[0]} of {taken_over[1]}\n"
            f"objects: {len(uploads)} sent, {len(accepted)} accepted "
            f"({len(interrupted)} uploads cut off and retried, "
            f"{sum(u.name_taken for u in uploads)} of them recorded by the killed process; "
            f"e.g. {[u.interruptions[0] for u in interrupted[:2]]}), "
            f"verified {states['verified']}, failed {states['failed']} "
            f"{dict(failed_by_reason)}\n"
            f"keys stored more than once: {len(stored_again)}, closest two store requests "
            f"of one key: {closest if closest is None else round(closest, 3)} s apart\n"
            f"settled {settled_in:.1f} s after the chaos; proxy: {len(ours)} requests "
            f"{dict(requests)}, faults {dict(faults)}; "
            f"total {time.monotonic() - started:.0f} s"
        )
        assert len(in_flight_kills) >= MIN_IN_FLIGHT_KILLS, kills
        failed_test = False
    finally:
        for member in members:
            member.stop()
        if proxy is not None:
            proxy.stop()
        if failed_test:
            for member in [*members, *([proxy] if proxy else [])]:
                for log in member.logs[-2:]:
                    print(f"----- {log.name} -----\n{_tail(log)}")
