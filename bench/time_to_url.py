"""Time to URL: one upload at a time, from the start of `POST /v1/objects?wait=`
to the verified URL in its answer, against a direct boto3 PUT + HEAD of the
same bytes, side by side in one run.

    .venv/bin/python bench/time_to_url.py

One moto server (its own process) is the store of both; the service runs
`serve` with profile `strong` pointed at it. Samples are taken in pairs (one
service upload, one direct PUT + HEAD, alternating which goes first), after a
warm-up, so whatever else the shared machine does falls on both alike. The
direct side computes the body's MD5, PUTs it with Content-MD5, HEADs it and
compares size and ETag (the check the service makes).

Besides p50 and p99 it splits the service's time using the ledger: from the
POST's start to the row's `created_at` (the body received and spooled, its
name checked), from there to `verified_at` (the row committed, the verifier's
claim, the PUT, its record, the HEAD; the store requests' own latency as the
verifier recorded it in the events), and from `verified_at` to the answer (the
`verified` row committed, the waiting request woken, the record sent).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import harness
import httpx

KIB = 1024
WAIT_SECONDS = 30


def parse_time(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    parsed = datetime.fromisoformat(str(value))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=200, help="per side (default 200)")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--object-bytes", type=int, default=64 * KIB)
    parser.add_argument("--worker-concurrency", type=int, default=16)
    parser.add_argument("--ledger", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument(
        "--store-latency-seconds",
        type=float,
        default=0.0,
        help="both sides reach moto through the chaos proxy adding this to every request",
    )
    parser.add_argument("--service-setting", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument(
        "--api-key", default=None, help="the service is given it (preset) and the client sends it"
    )
    parser.add_argument("--timeout-seconds", type=int, default=1200)
    args = parser.parse_args()
    harness.install_alarm(args.timeout_seconds)

    print("bench/time_to_url.py: single uploads, POST with wait vs direct PUT + HEAD")
    for line in harness.machine_lines():
        print(f"  {line}")
    print(
        f"  objects         {args.samples} per side of {harness.size_label(args.object_bytes)}, "
        f"random, one at a time, after {args.warmup} warm-up pairs"
    )
    latency = (
        f", through chaos-proxy --profile none adding {args.store_latency_seconds * 1000:.0f} ms"
        " to every request"
        if args.store_latency_seconds > 0
        else ", reached directly"
    )
    print("  store           moto server, own process, shared by both sides" + latency)
    print(
        "  direct          boto3 (the service's client set-up, retries off): "
        "MD5 + PUT (Content-MD5) + HEAD (size, ETag)"
    )
    print(
        f"  service         serve, profile strong, WORKER_CONCURRENCY {args.worker_concurrency}, "
        f"ledger {args.ledger}; POST ...&wait={WAIT_SECONDS}, timed to the 201 with its URL"
        + (f"; {', '.join(args.service_setting)}" if args.service_setting else "")
    )
    print(f"  {harness.pools_line(args.worker_concurrency)}")
    print(flush=True)

    work = Path(tempfile.mkdtemp(prefix="bench-ttu-"))
    processes = harness.Processes(work, harness.base_env())
    bucket = harness.unique_bucket("bench-ttu")
    try:
        with harness.ledger(args.ledger, work, "ttu") as database_url:
            try:
                moto, store = harness.start_store(processes, args.store_latency_seconds)
                env = harness.service_env(
                    database_url=database_url,
                    endpoint_url=store.url,
                    bucket=bucket,
                    spool_dir=work / "spool",
                    profile="strong",
                    api_key=args.api_key,
                    WORKER_CONCURRENCY=args.worker_concurrency,
                    **dict(item.split("=", 1) for item in args.service_setting),
                )
                service = harness.start_service(processes, env)
                return measure(args, database_url, moto, store, service, bucket)
            except BaseException:
                processes.print_logs()
                raise
            finally:
                processes.stop_all()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure(
    args: argparse.Namespace,
    database_url: str,
    moto: harness.Started,
    store: harness.Started,
    service: harness.Started,
    bucket: str,
) -> int:
    s3 = harness.s3_client(store.url, max_pool_connections=args.worker_concurrency)
    headers = {"Content-Type": "application/octet-stream"}
    if args.api_key:
        headers["Authorization"] = f"Bearer {args.api_key}"
    http = httpx.Client(base_url=service.url, headers=headers, timeout=120)

    def direct(index: int, body: bytes) -> float:
        key = f"direct/object-{index:05d}"
        started = time.perf_counter()
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
        elapsed = time.perf_counter() - started
        if int(head["ContentLength"]) != len(body) or head["ETag"].strip('"') != md5.hexdigest():
            raise RuntimeError(f"{key}: the store has other bytes")
        return elapsed

    def through_service(index: int, body: bytes) -> tuple[float, str, datetime, datetime]:
        name = f"service/object-{index:05d}"
        wall_start = datetime.now(UTC)
        started = time.perf_counter()
        answer = http.post("/v1/objects", params={"name": name, "wait": WAIT_SECONDS}, content=body)
        elapsed = time.perf_counter() - started
        wall_end = datetime.now(UTC)
        record = answer.json()
        if answer.status_code != 201 or record.get("state") != "verified" or not record.get("url"):
            raise RuntimeError(f"{name}: {answer.status_code} {answer.text[:300]}")
        return elapsed, str(record["id"]), wall_start, wall_end

    direct_times: list[float] = []
    service_times: list[float] = []
    samples: list[tuple[str, datetime, datetime]] = []
    processes = {"service": service.pid, "moto": moto.pid}
    if store is not moto:
        processes["proxy"] = store.pid
    meter = harness.CpuMeter(processes)
    direct_cpu: dict[str, float] = {}
    service_cpu: dict[str, float] = {}

    def add(into: dict[str, float], seconds: dict[str, float]) -> None:
        for name, value in seconds.items():
            into[name] = into.get(name, 0.0) + value

    for index in range(args.warmup + args.samples):
        body = os.urandom(args.object_bytes)
        timed = index >= args.warmup
        order = ("service", "direct") if index % 2 == 0 else ("direct", "service")
        for side in order:
            meter.start()
            if side == "direct":
                elapsed = direct(index, body)
                add(direct_cpu, meter.stop())
                if timed:
                    direct_times.append(elapsed)
            else:
                elapsed, object_id, wall_start, wall_end = through_service(index, body)
                add(service_cpu, meter.stop())
                if timed:
                    service_times.append(elapsed)
                    samples.append((object_id, wall_start, wall_end))
        if index + 1 == args.warmup:
            direct_cpu.clear()
            service_cpu.clear()
    http.close()

    # where the service's time goes, from the ledger
    ids = [object_id for object_id, _, _ in samples]
    placeholders = ", ".join(["%s"] * len(ids))
    rows = harness.ledger_rows(
        database_url,
        f"SELECT id, created_at, verified_at FROM objects WHERE id IN ({placeholders})",
        tuple(ids),
    )
    stamps = {str(r[0]): (parse_time(r[1]), parse_time(r[2])) for r in rows}
    latency: dict[str, float] = {}
    for object_id, action, ms in harness.ledger_rows(
        database_url,
        f"SELECT object_id, action, latency_ms FROM events WHERE object_id IN ({placeholders})",
        tuple(ids),
    ):
        latency[str(object_id)] = latency.get(str(object_id), 0.0) + float(ms or 0.0)
        del action
    accept, verify, store, answer_ms = [], [], [], []
    for object_id, wall_start, wall_end in samples:
        created, verified = stamps[object_id]
        accept.append((created - wall_start).total_seconds() * 1000)
        verify.append((verified - created).total_seconds() * 1000)
        store.append(latency.get(object_id, 0.0))
        answer_ms.append((wall_end - verified).total_seconds() * 1000)

    def ms(values: list[float], fraction: float) -> float:
        return 1000 * harness.percentile(values, fraction)

    d50, d99 = ms(direct_times, 0.5), ms(direct_times, 0.99)
    s50, s99 = ms(service_times, 0.5), ms(service_times, 0.99)
    print(f"{'':28} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8}")
    print(
        f"{'direct PUT + HEAD':28} {d50:>8.2f} {d99:>8.2f} "
        f"{1000 * statistics.fmean(direct_times):>8.2f}"
    )
    print(
        f"{'service POST to URL':28} {s50:>8.2f} {s99:>8.2f} "
        f"{1000 * statistics.fmean(service_times):>8.2f}"
    )
    print(f"{'ratio service/direct':28} {s50 / d50:>8.2f} {s99 / d99:>8.2f}")
    print()
    print("the service's time, split by the ledger (ms):")
    for label, values in (
        ("POST start -> spooled", accept),
        ("spooled -> verified_at", verify),
        ("  of which PUT + HEAD", store),
        ("verified_at -> answer", answer_ms),
    ):
        print(
            f"  {label:30} p50 {harness.percentile(values, 0.5):7.2f}  "
            f"p99 {harness.percentile(values, 0.99):7.2f}"
        )
    print()
    print("CPU ms per object (all threads of each process; client = this script):")
    names = ("client", *processes)
    print(f"  {'side':>8} " + " ".join(f"{n:>8}" for n in names))
    for side, cpu in (("direct", direct_cpu), ("service", service_cpu)):
        cells = [1000 * cpu.get(n, 0.0) / args.samples for n in names]
        print(f"  {side:>8} " + " ".join(f"{c:>8.2f}" for c in cells))
    print()
    ratio = s50 / d50
    store_label = (
        f"latency {args.store_latency_seconds * 1000:.0f} ms per request"
        if args.store_latency_seconds > 0
        else "reached directly"
    )
    print(
        f"target: time to URL (strong) <= 1.5x direct PUT + HEAD at p50 -> {ratio:.2f}x: "
        f"{harness.verdict(ratio <= 1.5)} (store {store_label})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
