"""A backlog of pending objects drained by 1, 2 and 4 `verified-urls worker`
processes, in one run, with the store behind the chaos proxy adding a fixed
latency to every request (so that the work waits on I/O as against a real store).

    .venv/bin/python bench/workers.py --objects 400 --worker-concurrency 4

For each worker count N, everything is fresh: a PostgreSQL database (migrated),
moto's server, the chaos proxy in front of it (`--profile none --set
latency_seconds=L`), a spool directory. The backlog is uploaded through the API
(`serve --no-worker`, so no verifier runs), then the API is stopped and the
backlog is held (its rows are made due an hour from now) while the N workers
start: their start-up (imports, migration check, spool sweep) is timed on its
own and not mixed into the drain. Once every worker says it is running, the
backlog is released in one transaction (due now, with the NOTIFY workers wake
on), and the drain is timed from that commit to the last `verified_at` in the
ledger. Every worker has the same WORKER_CONCURRENCY, so that one worker cannot
absorb all the parallelism.

Besides objects per second it prints what explains them: the rows leased at
once on average (the parallelism actually used, against the N x concurrency
slots), the store requests' latency as the workers recorded it, the CPU the
machine and each process used during the drain, and the ceiling the slots
would allow if they were always busy.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import harness
import httpx
import psycopg
from harness import (
    Processes,
    Timeout,
    machine_cpu,
    percentile,
    pg_url,
    process_cpu_seconds,
)

from service.ledger.notify import WORK_CHANNEL

BIN = harness.BIN
PG_PREFIX = "bench_workers_"
WORKER_COUNTS = (1, 2, 4)
HOLD_SECONDS = 3600  # the backlog is due this far ahead until it is released
POLL_SECONDS = 0.05
READY_MARK = " running: profile "  # the worker's log line once its verifier runs


def backend_cpu(connection: psycopg.Connection[Any]) -> dict[int, float]:
    """CPU seconds so far of every server process connected to this database."""
    rows = connection.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
    ).fetchall()
    return {int(str(pid)): process_cpu_seconds(int(str(pid))) for (pid,) in rows}


# ---------------------------------------------------------------- one run


@dataclass
class RunResult:
    workers: int
    concurrency: int
    objects: int
    upload_seconds: float
    startup_seconds: float
    drain_seconds: float
    verified: int
    failed: int
    failures: dict[str, int]
    mean_leased: float
    max_leased: int
    store_requests: int
    request_latency_ms: dict[str, tuple[float, float]]  # action -> (p50, p99)
    machine_busy: float  # 0..1 over all cores, during the drain
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    worker_exit_codes: list[int] = field(default_factory=list)
    load_average: float = 0.0  # 1-minute, at the end of the drain

    @property
    def rate(self) -> float:
        return self.verified / self.drain_seconds if self.drain_seconds > 0 else 0.0

    @property
    def slots(self) -> int:
        return self.workers * self.concurrency


def upload_backlog(base_url: str, objects: int, size: int, api_key: str | None, tag: str) -> float:
    headers = {"Content-Type": "application/octet-stream"}
    if api_key is not None:
        headers["Authorization"] = f"Bearer {api_key}"
    started = time.monotonic()
    with httpx.Client(base_url=base_url, timeout=60, headers=headers) as client:

        def one(index: int) -> None:
            answer = client.post(
                "/v1/objects",
                params={"name": f"{tag}/object-{index:06d}"},
                content=os.urandom(size),
            )
            if answer.status_code != 202:
                raise RuntimeError(f"upload {index}: {answer.status_code} {answer.text[:200]}")

        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(one, range(objects)))
    return time.monotonic() - started


def wait_ready(logs: list[Path], processes: list[subprocess.Popen[bytes]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for process in processes:
            if process.poll() is not None:
                raise RuntimeError(f"a worker exited with {process.returncode} at start-up")
        if all(READY_MARK in log.read_text(errors="replace") for log in logs):
            return
        time.sleep(0.02)
    raise Timeout(f"the workers did not start within {timeout} s")


def run_once(
    workers: int, args: argparse.Namespace, work_root: Path, base_env: dict[str, str]
) -> RunResult:
    tag = f"n{workers}"
    work = work_root / tag
    work.mkdir()
    processes = Processes(work, base_env)
    try:
        with harness.throwaway_database(PG_PREFIX, tag) as database:
            moto = harness.start_moto(processes)
            proxy = harness.start_proxy(
                processes, moto.url, settings=[f"latency_seconds={args.latency_seconds}"]
            )
            extra: dict[str, object] = {"WORKER_CONCURRENCY": args.worker_concurrency}
            if args.poll_seconds is not None:
                extra["WORKER_POLL_SECONDS"] = args.poll_seconds
            service_env = harness.service_env(
                database_url=pg_url(database, "postgresql+psycopg"),
                endpoint_url=proxy.url,
                bucket=harness.unique_bucket("bench-workers"),
                spool_dir=work / "spool",
                profile="strong",
                **extra,
            )

            # The backlog, through the API, with no verifier anywhere.
            api = harness.start_service(processes, service_env, worker=False, log_name="api.log")
            api_url = api.url
            upload_seconds = upload_backlog(
                api_url, args.objects, args.object_bytes, args.api_key, tag
            )
            if processes.stop(api.process) != 0:
                raise RuntimeError("the API process did not stop cleanly")

            with psycopg.connect(pg_url(database), autocommit=True) as ledger:
                pending = ledger.execute(
                    "SELECT count(*) FROM objects WHERE state = 'pending'"
                ).fetchone()
                if pending is None or pending[0] != args.objects:
                    raise RuntimeError(f"expected {args.objects} pending rows, found {pending}")
                ledger.execute(
                    "UPDATE objects SET next_action_at = now() + make_interval(secs => %s)"
                    " WHERE state = 'pending'",
                    (HOLD_SECONDS,),
                )

                # N workers; their start-up is timed apart from the drain.
                started = time.monotonic()
                logs = [work / f"worker-{i}.log" for i in range(workers)]
                worker_processes = [
                    processes.start([str(BIN / "verified-urls"), "worker"], log.name, service_env)
                    for log in logs
                ]
                wait_ready(logs, worker_processes, timeout=120)
                startup_seconds = time.monotonic() - started

                watched = {"moto": moto.pid, "proxy": proxy.pid}
                watched.update({f"worker{i}": p.pid for i, p in enumerate(worker_processes)})
                cpu_before = {name: process_cpu_seconds(pid) for name, pid in watched.items()}
                pg_before = backend_cpu(ledger)
                busy_before, total_before = machine_cpu()
                proxy_before = httpx.get(proxy.url + "/_chaos/stats").json()["requests"]["total"]

                with ledger.transaction():
                    ledger.execute(
                        "UPDATE objects SET next_action_at = clock_timestamp()"
                        " WHERE state = 'pending'"
                    )
                    ledger.execute("SELECT pg_notify(%s, '')", (WORK_CHANNEL,))
                released = datetime.now(UTC)

                leased_samples: list[int] = []
                deadline = time.monotonic() + args.drain_timeout_seconds
                while True:
                    row = ledger.execute(
                        "SELECT count(*) FILTER (WHERE state = 'pending'),"
                        " count(*) FILTER (WHERE state = 'pending' AND lease_token IS NOT NULL)"
                        " FROM objects"
                    ).fetchone()
                    assert row is not None
                    still_pending, leased = int(row[0]), int(row[1])
                    if still_pending == 0:
                        break
                    leased_samples.append(leased)
                    if time.monotonic() > deadline:
                        raise Timeout(
                            f"{still_pending} rows still pending after {args.drain_timeout_seconds} s"
                        )
                    for process in worker_processes:
                        if process.poll() is not None:
                            raise RuntimeError(f"a worker exited with {process.returncode}")
                    time.sleep(POLL_SECONDS)

                busy_after, total_after = machine_cpu()
                cpu_after = {name: process_cpu_seconds(pid) for name, pid in watched.items()}
                pg_after = backend_cpu(ledger)
                proxy_after = httpx.get(proxy.url + "/_chaos/stats").json()["requests"]["total"]

                summary = ledger.execute(
                    "SELECT count(*) FILTER (WHERE state = 'verified'),"
                    " count(*) FILTER (WHERE state = 'failed'),"
                    " max(coalesce(verified_at, updated_at))"
                    " FROM objects"
                ).fetchone()
                assert summary is not None
                verified, failed, last = int(summary[0]), int(summary[1]), summary[2]
                assert isinstance(last, datetime)
                failures = {
                    str(code): int(count)
                    for code, count in ledger.execute(
                        "SELECT error_code, count(*) FROM objects WHERE state = 'failed'"
                        " GROUP BY error_code"
                    ).fetchall()
                }
                latencies: dict[str, list[float]] = {}
                for action, latency in ledger.execute(
                    "SELECT action, latency_ms FROM events WHERE latency_ms IS NOT NULL"
                ).fetchall():
                    latencies.setdefault(str(action), []).append(float(str(latency)))

            exit_codes = [processes.stop(p) for p in worker_processes]
            cpu = {name: cpu_after[name] - cpu_before[name] for name in watched}
            cpu["workers"] = sum(v for k, v in cpu.items() if k.startswith("worker"))
            cpu["postgres"] = sum(
                after - pg_before.get(pid, 0.0) for pid, after in pg_after.items()
            )
            return RunResult(
                workers=workers,
                concurrency=args.worker_concurrency,
                objects=args.objects,
                upload_seconds=upload_seconds,
                startup_seconds=startup_seconds,
                drain_seconds=(last - released).total_seconds(),
                verified=verified,
                failed=failed,
                failures=failures,
                mean_leased=statistics.fmean(leased_samples) if leased_samples else 0.0,
                max_leased=max(leased_samples, default=0),
                store_requests=int(proxy_after) - int(proxy_before),
                request_latency_ms={
                    action: (percentile(values, 0.5), percentile(values, 0.99))
                    for action, values in sorted(latencies.items())
                },
                machine_busy=(busy_after - busy_before) / max(1, total_after - total_before),
                cpu_seconds=cpu,
                worker_exit_codes=exit_codes,
                load_average=os.getloadavg()[0],
            )
    except BaseException:
        for log in sorted(work.glob("*.log")):
            lines = log.read_text(errors="replace").splitlines()[-15:]
            print(f"--- last lines of {log.name}", *lines, sep="\n", file=sys.stderr)
        raise
    finally:
        processes.stop_all()


# ---------------------------------------------------------------- report


def print_setup(args: argparse.Namespace) -> None:
    load = os.getloadavg()
    print("bench/workers.py: a pending backlog drained by 1, 2 and 4 worker processes")
    print(f"  date                {datetime.now(UTC).isoformat(timespec='seconds')}")
    print(
        f"  machine             nproc {os.cpu_count()}, load average "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at start, Python {sys.version.split()[0]}"
    )
    print(f"  backlog             {args.objects} objects of {args.object_bytes} bytes, per run")
    print(
        f"  store               moto behind chaos-proxy, latency {args.latency_seconds} s/request"
    )
    print(f"  worker counts       {', '.join(map(str, WORKER_COUNTS))}")
    print(f"  WORKER_CONCURRENCY  {args.worker_concurrency} per worker (the same for every N)")
    poll = args.poll_seconds if args.poll_seconds is not None else "service default"
    print(f"  WORKER_POLL_SECONDS {poll}")
    print("  profile             strong (one PUT, then one HEAD right after it)")
    print("  ledger              PostgreSQL 127.0.0.1:5432, a fresh database per run")
    print("  timing              from the backlog's release (workers already up) to the last")
    print("                      verified_at in the ledger; start-up is timed apart")
    print(f"  api key             {'given (sent as a Bearer token)' if args.api_key else 'none'}")
    print(flush=True)


def print_results(results: list[RunResult]) -> None:
    base = results[0].rate
    print()
    print(
        f"{'workers':>7} {'slots':>5} {'verified':>8} {'failed':>6} {'drain s':>8} "
        f"{'obj/s':>7} {'vs 1':>5} {'start s':>7} {'leased avg/max':>14} {'slot use':>8} "
        f"{'req/obj':>7} {'CPU busy':>8}"
    )
    for r in results:
        print(
            f"{r.workers:>7} {r.slots:>5} {r.verified:>8} {r.failed:>6} {r.drain_seconds:>8.2f} "
            f"{r.rate:>7.1f} {r.rate / base:>5.2f} {r.startup_seconds:>7.2f} "
            f"{r.mean_leased:>9.1f}/{r.max_leased:<4} {r.mean_leased / r.slots:>8.0%} "
            f"{r.store_requests / max(1, r.objects):>7.2f} {r.machine_busy:>8.0%}"
        )
    print()
    print("store request latency as the workers recorded it (ms, p50 / p99):")
    for r in results:
        parts = [f"{a} {p50:.0f} / {p99:.0f}" for a, (p50, p99) in r.request_latency_ms.items()]
        print(f"  {r.workers} worker(s): {', '.join(parts)}")
    print()
    print("CPU seconds during the drain (per object, ms), over all threads of each process:")
    names = ("workers", "proxy", "moto", "postgres")
    print(f"  {'workers':>7} " + " ".join(f"{n:>16}" for n in names))
    for r in results:
        cells = [
            f"{r.cpu_seconds[n]:6.2f} ({1000 * r.cpu_seconds[n] / max(1, r.verified):5.1f})"
            for n in names
        ]
        print(f"  {r.workers:>7} " + " ".join(f"{c:>16}" for c in cells))
    print()
    for r in results:
        per_object_ms = sum(p50 for p50, _ in r.request_latency_ms.values())
        ceiling = r.slots / (per_object_ms / 1000) if per_object_ms > 0 else float("nan")
        print(
            f"  {r.workers} worker(s): the store requests of one object take ~{per_object_ms:.0f} ms"
            f" (p50s summed), so {r.slots} always-busy slots would allow ~{ceiling:.0f} obj/s;"
            f" measured {r.rate:.1f} ({r.rate / ceiling:.0%} of it)"
        )
        if r.mean_leased / r.slots < 0.5:
            print(
                f"    slots idle {1 - r.mean_leased / r.slots:.0%} of the drain: rows were not"
                " claimed as fast as slots freed up (not waiting on the store, nor on CPU"
                f" if the CPU was not saturated); per worker {r.rate / r.workers:.1f} obj/s"
            )
        if r.machine_busy > 0.9:
            print(
                f"    the machine's {os.cpu_count()} cores were {r.machine_busy:.0%} busy "
                f"(1-min load average {r.load_average:.1f} at the end): CPU-bound, other "
                "processes on the machine included"
            )
        if r.failures:
            print(f"    failed by reason: {r.failures}")
        if any(code != 0 for code in r.worker_exit_codes):
            print(f"    worker exit codes after SIGTERM: {r.worker_exit_codes}")
    four = next((r for r in results if r.workers == 4), None)
    if four is not None:
        ratio = four.rate / base
        verdict = "MET" if ratio >= 3.0 else "NOT MET"
        print()
        print(f"target: 4 workers at least 3x as fast as 1 -> {ratio:.2f}x: {verdict}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=400, help="backlog per run (default 400)")
    parser.add_argument("--object-bytes", type=int, default=1024, help="default 1 KiB")
    parser.add_argument(
        "--latency-seconds", type=float, default=0.05, help="added to every store request"
    )
    parser.add_argument("--worker-concurrency", type=int, default=4, help="per worker (default 4)")
    parser.add_argument(
        "--poll-seconds",
        type=float,
        default=None,
        help="VERIFIED_URLS_WORKER_POLL_SECONDS for the workers (default: the service's)",
    )
    parser.add_argument("--drain-timeout-seconds", type=float, default=300)
    parser.add_argument(
        "--timeout-seconds", type=int, default=1800, help="bound on the whole run (default 30 min)"
    )
    parser.add_argument("--api-key", default=None, help="sent as `Authorization: Bearer KEY`")
    args = parser.parse_args()

    def on_alarm(_signum: int, _frame: FrameType | None) -> None:
        raise Timeout(f"the run took longer than {args.timeout_seconds} s")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(args.timeout_seconds)
    print_setup(args)
    work_root = Path(tempfile.mkdtemp(prefix="bench-workers-"))
    base_env = harness.base_env()
    results: list[RunResult] = []
    try:
        for workers in WORKER_COUNTS:
            result = run_once(workers, args, work_root, base_env)
            results.append(result)
            print(
                f"{workers} worker(s): {result.verified} verified, {result.failed} failed in "
                f"{result.drain_seconds:.2f} s = {result.rate:.1f} obj/s (start-up "
                f"{result.startup_seconds:.2f} s, upload {result.upload_seconds:.2f} s)",
                flush=True,
            )
    finally:
        signal.alarm(0)
        shutil.rmtree(work_root, ignore_errors=True)
    print_results(results)
    return 0 if all(r.failed == 0 and r.verified == r.objects for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
