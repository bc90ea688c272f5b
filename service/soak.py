"""The proof: push many objects through a running service whose store misbehaves,
then check every URL it handed out, directly against the real store.

`verified-urls soak --service URL --store-direct URL --objects N --concurrency C`
exits non-zero if any URL handed out was dead or served wrong bytes, if any
object is still pending after the deadline, if an accepted object is missing
from the ledger, or if more than `--max-failed` objects failed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import statistics
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from service.storage.s3 import make_s3_client

URL_FETCH_TRIES = 5  # other errors than 404 on a URL are retried this often
POLL_WAIT_SECONDS = 10
DEFAULT_BUCKET_CREDENTIALS = ("testing", "testing")


@dataclass
class Outcome:
    index: int
    name: str
    size: int
    sha256: str
    object_id: str | None = None
    state: str = "not_accepted"
    error_code: str | None = None
    url: str | None = None
    bucket: str | None = None
    key: str | None = None
    seconds_to_verified: float | None = None
    url_dead: bool = False
    url_wrong_bytes: bool = False
    url_unchecked: str | None = None  # why the URL could not be judged


@dataclass
class Report:
    objects: int
    accepted: int = 0
    not_accepted: int = 0
    verified: int = 0
    failed_by_reason: dict[str, int] = field(default_factory=dict)
    still_pending: int = 0
    missing_from_ledger: int = 0
    dead_urls: int = 0
    wrong_bytes: int = 0
    direct_missing: int = 0
    direct_wrong_bytes: int = 0
    urls_unchecked: int = 0
    seconds_to_verified_p50: float | None = None
    seconds_to_verified_p99: float | None = None
    store_requests_per_object: dict[str, float] = field(default_factory=dict)
    faults_injected: dict[str, int] = field(default_factory=dict)
    duration_seconds: float = 0.0

    @property
    def failed(self) -> int:
        return sum(self.failed_by_reason.values())

    def problems(self, max_failed: int) -> list[str]:
        found = []
        for name in ("dead_urls", "wrong_bytes", "still_pending", "missing_from_ledger"):
            if getattr(self, name):
                found.append(f"{name} = {getattr(self, name)}")
        if self.direct_missing or self.direct_wrong_bytes:
            found.append(
                f"verified objects missing ({self.direct_missing}) or wrong "
                f"({self.direct_wrong_bytes}) in the store itself"
            )
        if self.not_accepted:
            found.append(f"not_accepted = {self.not_accepted}")
        if self.failed > max_failed:
            found.append(f"failed = {self.failed} > {max_failed}")
        return found


def object_bytes(seed: int, index: int, max_bytes: int) -> bytes:
    """Mixed sizes from 0 B to `max_bytes`, reproducible from the seed."""
    rng = random.Random(seed * 1_000_003 + index)
    roll = rng.random()
    if index % 50 == 0 or max_bytes == 0:
        size = 0
    elif roll < 0.5:
        size = rng.randint(1, min(max_bytes, 4096))
    elif roll < 0.9:
        size = rng.randint(1, min(max_bytes, 256 * 1024))
    else:
        size = rng.randint(1, max_bytes)
    return rng.randbytes(size)


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
        self.api = httpx.Client(base_url=args.service, headers=headers, timeout=60.0)
        self.public = httpx.Client(timeout=30.0)
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._done = 0
        self._url_fetches = 0
        self._states: Counter[str] = Counter()
        self.run_id = f"soak-{int(time.time())}-{random.randrange(16**6):06x}"

    def close(self) -> None:
        self.api.close()
        self.public.close()

    # --------------------------------------------------------------- one object

    def one(self, index: int) -> Outcome:
        data = object_bytes(self.args.seed, index, self.args.max_bytes)
        name = f"{self.run_id}/{index:06d} ü+%.bin"
        outcome = Outcome(index, name, len(data), hashlib.sha256(data).hexdigest())
        started = time.monotonic()
        record = self._upload(name, data)
        if record is None:
            return self._finish(outcome)
        outcome.object_id = record["id"]
        deadline = started + self.args.deadline_seconds
        while record["state"] == "pending" and time.monotonic() < deadline:
            wait = min(POLL_WAIT_SECONDS, max(0.0, deadline - time.monotonic()))
            record = self._get_record(record["id"], wait) or record
        outcome.state = record["state"]
        outcome.bucket, outcome.key = record["bucket"], record["key"]
        if record["state"] == "verified":
            outcome.seconds_to_verified = time.monotonic() - started
            outcome.url = record["url"]
            self._fetch_url(outcome, data)
        elif record["state"] == "failed":
            outcome.error_code = (record.get("error") or {}).get("code")
        return self._finish(outcome)

    def _upload(self, name: str, data: bytes) -> dict[str, Any] | None:
        for attempt in range(URL_FETCH_TRIES):
            try:
                response = self.api.post(
                    "/v1/objects",
                    params={"name": name},
                    content=data,
                    headers={"Content-Type": "application/octet-stream"},
                )
            except httpx.HTTPError:
                time.sleep(0.2 * (attempt + 1))
                continue
            if response.status_code in (201, 202):
                record: dict[str, Any] = response.json()
                return record
            if response.status_code == 503:
                time.sleep(float(response.headers.get("retry-after", "1")))
                continue
            print(
                f"\nupload of {name!r} refused: {response.status_code} {response.text}",
                file=sys.stderr,
            )
            return None
        return None

    def _get_record(self, object_id: str, wait: float) -> dict[str, Any] | None:
        try:
            response = self.api.get(
                f"/v1/objects/{object_id}", params={"wait": wait}, timeout=wait + 30
            )
        except httpx.HTTPError:
            time.sleep(0.5)
            return None
        if response.status_code != 200:
            # 429 (the tenant's read limit) and 503 say when to ask again
            time.sleep(float(response.headers.get("retry-after", "0.5")))
            return None
        record: dict[str, Any] = response.json()
        return record

    def _fetch_url(self, outcome: Outcome, data: bytes) -> None:
        """The moment a URL is handed out, a customer may use it."""
        assert outcome.url is not None
        for _ in range(URL_FETCH_TRIES):
            with self._lock:
                self._url_fetches += 1
            try:
                response = self.public.get(outcome.url)
            except httpx.HTTPError as exc:
                outcome.url_unchecked = type(exc).__name__
                time.sleep(0.2)
                continue
            if response.status_code == 404:
                outcome.url_dead = True
                return
            if response.status_code == 200:
                outcome.url_wrong_bytes = response.content != data
                outcome.url_unchecked = None
                return
            outcome.url_unchecked = f"HTTP {response.status_code}"
            time.sleep(0.2)

    def _finish(self, outcome: Outcome) -> Outcome:
        with self._lock:
            self._done += 1
            self._states[outcome.state] += 1
            if self._done % 10 == 0 or self._done == self.args.objects:
                states = " ".join(f"{k}={v}" for k, v in sorted(self._states.items()))
                print(
                    f"\r{self._done}/{self.args.objects} settled  {states}   ",
                    end="",
                    file=sys.stderr,
                    flush=True,
                )
        return outcome

    # --------------------------------------------------------------- the whole run

    def run(self) -> Report:
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=self.args.concurrency) as pool:
            self.outcomes = list(pool.map(self.one, range(self.args.objects)))
        print(file=sys.stderr)
        report = self._report()
        report.duration_seconds = round(time.monotonic() - started, 2)
        return report

    def _report(self) -> Report:
        report = Report(objects=self.args.objects)
        failed: Counter[str] = Counter()
        for outcome in self.outcomes:
            if outcome.object_id is None:
                report.not_accepted += 1
                continue
            report.accepted += 1
            if outcome.state == "verified":
                report.verified += 1
            elif outcome.state == "failed":
                failed[outcome.error_code or "unknown"] += 1
            elif outcome.state == "pending":
                report.still_pending += 1
            report.dead_urls += outcome.url_dead
            report.wrong_bytes += outcome.url_wrong_bytes
            report.urls_unchecked += outcome.url_unchecked is not None
        report.failed_by_reason = dict(failed)
        report.missing_from_ledger = self._missing_from_ledger()
        report.direct_missing, report.direct_wrong_bytes = self._check_store_directly()
        times = sorted(o.seconds_to_verified for o in self.outcomes if o.seconds_to_verified)
        if times:
            report.seconds_to_verified_p50 = round(statistics.median(times), 3)
            report.seconds_to_verified_p99 = round(
                times[min(len(times) - 1, int(len(times) * 0.99))], 3
            )
        report.store_requests_per_object, report.faults_injected = self._proxy_figures(report)
        return report

    def _missing_from_ledger(self) -> int:
        missing = 0
        for outcome in self.outcomes:
            if outcome.object_id is None:
                continue
            response = self.api.get(f"/v1/objects/{outcome.object_id}")
            while response.status_code == 429:  # the tenant's read limit
                time.sleep(float(response.headers["retry-after"]))
                response = self.api.get(f"/v1/objects/{outcome.object_id}")
            missing += response.status_code == 404
        return missing

    def _check_store_directly(self) -> tuple[int, int]:
        """Every verified object, read from the store behind the proxy."""
        client = make_s3_client(
            endpoint_url=self.args.store_direct,
            region="us-east-1",
            max_pool_connections=self.args.concurrency,
            connect_timeout_seconds=5,
            read_timeout_seconds=60,
            access_key_id=self.args.aws_access_key_id,
            secret_access_key=self.args.aws_secret_access_key,
        )
        verified = [o for o in self.outcomes if o.state == "verified"]

        def check(outcome: Outcome) -> str:
            try:
                body = client.get_object(Bucket=outcome.bucket, Key=outcome.key)["Body"].read()
            except Exception:
                return "missing"
            return "ok" if hashlib.sha256(body).hexdigest() == outcome.sha256 else "wrong"

        with ThreadPoolExecutor(max_workers=self.args.concurrency) as pool:
            results = Counter(pool.map(check, verified))
        return results["missing"], results["wrong"]

    def _proxy_figures(self, report: Report) -> tuple[dict[str, float], dict[str, int]]:
        """From the fault-injecting proxy the URLs go through, if they do."""
        url = next((o.url for o in self.outcomes if o.url), None)
        if url is None:
            return {}, {}
        parts = urlsplit(url)
        try:
            stats = self.public.get(f"{parts.scheme}://{parts.netloc}/_chaos/stats").json()
            stats["requests"]["by_kind"], stats["injected"]
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            return {}, {}
        by_kind = Counter({str(k): int(v) for k, v in stats["requests"]["by_kind"].items()})
        # the proxy also saw this run's own URL fetches; they are no store work
        by_kind["get"] -= self._url_fetches
        per_object = {}
        if report.accepted:
            for kind, count in sorted(by_kind.items()):
                if count > 0:
                    per_object[kind] = round(count / report.accepted, 3)
        injected = {str(k): int(v) for k, v in stats["injected"].items()}
        return per_object, injected


def add_command(commands: Any) -> None:
    soak = commands.add_parser(
        "soak", help="push objects through a running service and check every URL it hands out"
    )
    soak.add_argument("--service", required=True, help="the service's base URL")
    soak.add_argument(
        "--store-direct",
        required=True,
        help="the S3 endpoint behind the proxy, to check objects directly",
    )
    soak.add_argument("--objects", type=int, default=200)
    soak.add_argument("--concurrency", type=int, default=16)
    soak.add_argument("--api-key", default=None)
    soak.add_argument("--max-bytes", type=int, default=1024 * 1024)
    soak.add_argument("--max-failed", type=int, default=0)
    soak.add_argument(
        "--deadline-seconds",
        type=float,
        default=600.0,
        help="an object still pending this long after its upload is stuck",
    )
    soak.add_argument("--json", type=Path, default=None, help="write the report here too")
    soak.add_argument("--seed", type=int, default=1)
    soak.add_argument("--aws-access-key-id", default=DEFAULT_BUCKET_CREDENTIALS[0])
    soak.add_argument("--aws-secret-access-key", default=DEFAULT_BUCKET_CREDENTIALS[1])
    soak.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    soak = Soak(args)
    try:
        report = soak.run()
    finally:
        soak.close()
    document = asdict(report) | {"failed": report.failed}
    print(json.dumps(document, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    problems = report.problems(args.max_failed)
    for problem in problems:
        print(f"SOAK FAILED: {problem}", file=sys.stderr)
    if not problems:
        print("soak passed: no dead URL, no wrong bytes, nothing stuck or lost", file=sys.stderr)
    return 1 if problems else 0
