"""Throughput: objects through the service (until verified) against a client
that stores and verifies them by hand with boto3, side by side in one run.

    .venv/bin/python bench/throughput.py

One moto server (its own process) is the store of both. The service runs
`serve` with VERIFIED_URLS_S3_ENDPOINT_URL pointing at it, profile `strong`.
For each object size (500 x 64 KiB, 40 x 8 MiB) and each concurrency (1, 16):

- direct: one shared boto3 client (the service's own client set-up:
  retries off, path style, Content-MD5) whose max_pool_connections equals the
  service's WORKER_CONCURRENCY, N threads; per object the client computes the
  body's MD5, PUTs it with Content-MD5, HEADs it and compares size and ETag:
  one PUT and one HEAD, a verifying client done by hand;
- service: N threads sharing one keep-alive HTTP client, each object a
  `POST /v1/objects?name=...&wait=30` answered 201 with its verified URL.

Bodies are random and held in memory (made before timing). The phases
alternate which side goes first; each is timed from the first request to the
last answer. Objects are deleted from moto between phases (untimed), so the
store's size stays the same. CPU seconds of every process (this client, the
service, moto, and PostgreSQL's backends for the ledger) are read from /proc
around each phase.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import harness
import httpx

KIB = 1024
MIB = 1024**2
WAIT_SECONDS = 30
WARMUP_OBJECTS = 8


@dataclass
class Phase:
    side: str  # direct | service
    size: int
    objects: int
    concurrency: int
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def objects_per_second(self) -> float:
        return self.objects / self.seconds if self.seconds > 0 else 0.0

    @property
    def megabytes_per_second(self) -> float:
        return self.objects * self.size / 1e6 / self.seconds if self.seconds > 0 else 0.0

    def cpu_ms_per_object(self, name: str) -> float:
        return 1000 * self.cpu.get(name, 0.0) / max(1, self.objects)


@dataclass
class Pair:
    direct: list[Phase] = field(default_factory=list)
    service: list[Phase] = field(default_factory=list)

    @staticmethod
    def combined(phases: list[Phase]) -> Phase:
        """Rounds added up: all objects over all seconds, all CPU."""
        first = phases[0]
        total = Phase(first.side, first.size, 0, first.concurrency)
        for phase in phases:
            total.objects += phase.objects
            total.seconds += phase.seconds
            total.errors += phase.errors
            for name, value in phase.cpu.items():
                total.cpu[name] = total.cpu.get(name, 0.0) + value
        return total


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.processes = harness.Processes(work, harness.base_env())
        self.bucket = harness.unique_bucket("bench-throughput")
        self.sequence = 0

    def run(self) -> list[tuple[int, int, Pair]]:
        args = self.args
        with harness.ledger(args.ledger, self.work, "throughput") as database_url:
            self.database_url = database_url
            try:
                moto, store = harness.start_store(self.processes, args.store_latency_seconds)
                env = harness.service_env(
                    database_url=database_url,
                    endpoint_url=store.url,
                    bucket=self.bucket,
                    spool_dir=self.work / "spool",
                    profile="strong",
                    api_key=args.api_key,
                    WORKER_CONCURRENCY=args.worker_concurrency,
                    **dict(item.split("=", 1) for item in args.service_setting),
                )
                service = harness.start_service(self.processes, env)
                self.moto, self.service = moto, service
                self.s3 = harness.s3_client(store.url, max_pool_connections=args.worker_concurrency)
                headers = {"Content-Type": "application/octet-stream"}
                if args.api_key:
                    headers["Authorization"] = f"Bearer {args.api_key}"
                limits = httpx.Limits(
                    max_connections=max(args.concurrency), max_keepalive_connections=64
                )
                self.http = httpx.Client(
                    base_url=service.url, headers=headers, timeout=120, limits=limits
                )
                self.meter_pids = {"service": service.pid, "moto": moto.pid}
                if store is not moto:
                    self.meter_pids["proxy"] = store.pid
                return self._measure()
            except BaseException:
                self.processes.print_logs()
                raise
            finally:
                self.processes.stop_all()

    def _measure(self) -> list[tuple[int, int, Pair]]:
        args = self.args
        # warm-up: connections, lazy imports, the ledger's first statements
        warm = [os.urandom(KIB) for _ in range(WARMUP_OBJECTS)]
        for side in ("direct", "service"):
            self._phase(side, warm, min(4, max(args.concurrency)), timed=False)
        results = []
        for size, count in (
            (args.small_bytes, args.small_objects),
            (args.large_bytes, args.large_objects),
        ):
            if count == 0:
                continue
            bodies = [os.urandom(size) for _ in range(count)]
            for concurrency in args.concurrency:
                pair = Pair()
                for round_number in range(args.rounds):
                    order = ("direct", "service")
                    if (round_number + len(results)) % 2:
                        order = ("service", "direct")
                    for side in order:
                        phase = self._phase(side, bodies, concurrency)
                        (pair.direct if side == "direct" else pair.service).append(phase)
                        print(
                            f"  {harness.size_label(size):>7} x {count:<4} c{concurrency:<3} "
                            f"{side:<8} {phase.seconds:7.2f} s {phase.objects_per_second:8.1f} "
                            f"obj/s {phase.megabytes_per_second:7.1f} MB/s"
                            + (f"  {len(phase.errors)} errors" if phase.errors else ""),
                            flush=True,
                        )
                results.append((size, concurrency, pair))
            del bodies
        return results

    def _phase(self, side: str, bodies: list[bytes], concurrency: int, timed: bool = True) -> Phase:
        self.sequence += 1
        prefix = f"p{self.sequence:03d}-{side}"
        phase = Phase(side, len(bodies[0]), len(bodies), concurrency)
        one: Callable[[int], str | None] = (
            self._direct_one(prefix, bodies)
            if side == "direct"
            else self._service_one(prefix, bodies)
        )
        meter = harness.CpuMeter(self.meter_pids)
        pg_before = self._pg_cpu()
        meter.start()
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            outcomes = list(pool.map(one, range(len(bodies))))
        phase.seconds = time.perf_counter() - started
        phase.cpu = meter.stop()
        if pg_before is not None:
            phase.cpu["postgres"] = harness.postgres_cpu_between(pg_before, self._pg_cpu() or {})
        phase.errors = [outcome for outcome in outcomes if outcome is not None]
        if phase.errors and timed:
            print(f"    first error: {phase.errors[0]}", file=sys.stderr)
        self._delete_prefix(prefix, len(bodies))
        return phase

    def _pg_cpu(self) -> dict[int, float] | None:
        if not self.database_url.startswith("postgresql"):
            return None
        return harness.postgres_backend_cpu(self.database_url)

    def _direct_one(self, prefix: str, bodies: list[bytes]) -> Callable[[int], str | None]:
        s3, bucket = self.s3, self.bucket

        def one(index: int) -> str | None:
            body = bodies[index]
            key = f"{prefix}/object-{index:05d}"
            md5 = hashlib.md5(body)
            s3.put_object(
                Bucket=bucket,
                Key=key,
                Body=body,
                ContentLength=len(body),
                ContentMD5=base64.b64encode(md5.digest()).decode(),
                ContentType="application/octet-stream",
            )
            head = s3.head_object(Bucket=bucket, Key=key)
            etag = str(head.get("ETag", "")).strip('"')
            if int(head["ContentLength"]) != len(body) or etag != md5.hexdigest():
                return f"{key}: store has size {head['ContentLength']} ETag {etag}"
            return None

        return one

    def _service_one(self, prefix: str, bodies: list[bytes]) -> Callable[[int], str | None]:
        http = self.http

        def one(index: int) -> str | None:
            name = f"{prefix}/object-{index:05d}"
            answer = http.post(
                "/v1/objects", params={"name": name, "wait": WAIT_SECONDS}, content=bodies[index]
            )
            if answer.status_code != 201:
                return f"{name}: {answer.status_code} {answer.text[:200]}"
            record: dict[str, Any] = answer.json()
            if record.get("state") != "verified" or not record.get("url"):
                return f"{name}: answered 201 without a verified URL: {record}"
            return None

        return one

    def _delete_prefix(self, prefix: str, count: int) -> None:
        # the service's objects live under its tenant's key prefix, the direct ones do not
        tenant = harness.key_prefix(self.args.api_key) if "service" in prefix else ""
        keys = [{"Key": f"{tenant}{prefix}/object-{index:05d}"} for index in range(count)]
        for start in range(0, len(keys), 1000):
            self.s3.delete_objects(
                Bucket=self.bucket, Delete={"Objects": keys[start : start + 1000], "Quiet": True}
            )


# ---------------------------------------------------------------- report


def latency_note(args: argparse.Namespace) -> str:
    if args.store_latency_seconds <= 0:
        return ", reached directly"
    return (
        f", reached by both through chaos-proxy --profile none adding "
        f"{args.store_latency_seconds * 1000:.0f} ms to every request"
    )


def print_setup(args: argparse.Namespace) -> None:
    print("bench/throughput.py: objects through the service vs a direct boto3 client, one run")
    for line in harness.machine_lines():
        print(f"  {line}")
    print(
        f"  objects         {args.small_objects} x {harness.size_label(args.small_bytes)} and "
        f"{args.large_objects} x {harness.size_label(args.large_bytes)}, random, in memory"
    )
    print(f"  concurrency     {', '.join(map(str, args.concurrency))} client threads")
    print(f"  {harness.pools_line(args.worker_concurrency)}")
    print(f"  rounds          {args.rounds} per configuration, alternating which side goes first")
    print("  store           moto server, own process, shared by both sides" + latency_note(args))
    print(
        f"  direct          boto3, one shared client, max_pool_connections "
        f"{args.worker_concurrency}, retries off; MD5 + PUT (Content-MD5) + HEAD (size, ETag)"
    )
    print(
        f"  service         serve, profile strong, WORKER_CONCURRENCY {args.worker_concurrency}"
        f" (boto3 pool {args.worker_concurrency + 8}), ledger {args.ledger}; POST ...&wait="
        f"{WAIT_SECONDS} answered 201 with the verified URL"
        + (f"; {', '.join(args.service_setting)}" if args.service_setting else "")
    )
    print(flush=True)


def print_results(results: list[tuple[int, int, Pair]], args: argparse.Namespace) -> bool:
    print()
    print(
        f"{'size':>7} {'conc':>4} | {'direct obj/s':>12} {'MB/s':>7} | {'service obj/s':>13} "
        f"{'MB/s':>7} | {'ratio':>5}"
    )
    ratios: dict[tuple[int, int], float] = {}
    for size, concurrency, pair in results:
        direct, service = Pair.combined(pair.direct), Pair.combined(pair.service)
        ratio = service.objects_per_second / direct.objects_per_second
        ratios[(size, concurrency)] = ratio
        print(
            f"{harness.size_label(size):>7} {concurrency:>4} | {direct.objects_per_second:>12.1f} "
            f"{direct.megabytes_per_second:>7.1f} | {service.objects_per_second:>13.1f} "
            f"{service.megabytes_per_second:>7.1f} | {ratio:>5.2f}"
        )
    print()
    print("CPU ms per object (all threads of each process; client = this script):")
    names = ("client", "service", "moto", "postgres")
    if args.store_latency_seconds > 0:
        names = (*names, "proxy")
    print(
        f"{'size':>7} {'conc':>4} {'side':>8} | " + " ".join(f"{n:>8}" for n in names) + " | total"
    )
    for size, concurrency, pair in results:
        for phases in (pair.direct, pair.service):
            phase = Pair.combined(phases)
            cells = [phase.cpu_ms_per_object(n) for n in names]
            print(
                f"{harness.size_label(size):>7} {concurrency:>4} {phase.side:>8} | "
                + " ".join(f"{c:>8.2f}" for c in cells)
                + f" | {sum(cells):6.2f}"
            )
    errors = sum(
        len(Pair.combined(p.direct).errors) + len(Pair.combined(p.service).errors)
        for _, _, p in results
    )
    print()
    ok = errors == 0
    if errors:
        print(f"errors: {errors} objects were not verified (see above)")
    top = max(args.concurrency)
    for size, target in ((args.large_bytes, 0.8), (args.small_bytes, 0.5)):
        ratio = ratios.get((size, top))
        if ratio is None:
            continue
        print(
            f"target: service/direct >= {target} for {harness.size_label(size)} at concurrency "
            f"{top} -> {ratio:.2f}: {harness.verdict(ratio >= target)} (store"
            f"{latency_note(args).removeprefix(',')})"
        )
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small-objects", type=int, default=500)
    parser.add_argument("--small-bytes", type=int, default=64 * KIB)
    parser.add_argument("--large-objects", type=int, default=40)
    parser.add_argument("--large-bytes", type=int, default=8 * MIB)
    parser.add_argument(
        "--concurrency", type=lambda s: [int(v) for v in s.split(",")], default=[1, 16]
    )
    parser.add_argument("--worker-concurrency", type=int, default=16, help="service and pool")
    parser.add_argument("--rounds", type=int, default=2, help="phases per side and configuration")
    parser.add_argument("--ledger", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument(
        "--store-latency-seconds",
        type=float,
        default=0.0,
        help="both sides reach moto through the chaos proxy adding this to every request",
    )
    parser.add_argument(
        "--service-setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an extra VERIFIED_URLS_NAME for the service",
    )
    parser.add_argument(
        "--api-key", default=None, help="the service is given it (preset) and the client sends it"
    )
    parser.add_argument("--timeout-seconds", type=int, default=1800)
    args = parser.parse_args()
    harness.install_alarm(args.timeout_seconds)
    print_setup(args)
    work = Path(tempfile.mkdtemp(prefix="bench-throughput-"))
    try:
        results = Bench(args, work).run()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if print_results(results, args) else 1


if __name__ == "__main__":
    sys.exit(main())
