"""Memory: the service process's peak RSS while one 1 GiB object streams
through it (spooled, then stored in multipart parts above the threshold, then
verified), against its idle RSS.

    .venv/bin/python bench/memory.py

moto's server (its own process, so the object's bytes that moto holds are not
counted in the service) and `serve` pointed at it, profile `strong`, default
multipart settings (threshold 64 MiB, parts of 16 MiB). After a warm-up upload
of a small object, the service's idle RSS is taken and its RSS high-water mark
reset (`/proc/PID/clear_refs`); the 1 GiB body is then generated as it is sent
(1 MiB chunks, never whole in this process either) with a Content-Length, and
the record is followed until `verified`. The peak is the kernel's high-water
mark (VmHWM) of that span, cross-checked by sampling the RSS every 10 ms.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import harness
import httpx

MIB = 1024**2
GIB = 1024**3
CHUNK_BYTES = MIB
SAMPLE_SECONDS = 0.01
TARGET_ADDED_BYTES = 64 * MIB
IDLE_SETTLE_SECONDS = 0.5  # after the warm-up, before the idle RSS is taken


class Sampler(threading.Thread):
    """The RSS of a process every SAMPLE_SECONDS, and its maximum."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0
        self.samples = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                self.peak = max(self.peak, harness.rss_bytes(self.pid))
            except OSError:
                return
            self.samples += 1
            time.sleep(SAMPLE_SECONDS)

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return self.peak


def body(size: int) -> Iterator[bytes]:
    """`size` pseudo-random bytes, made as they are sent."""
    blocks = [os.urandom(CHUNK_BYTES) for _ in range(4)]
    sent = 0
    index = 0
    while sent < size:
        take = min(CHUNK_BYTES, size - sent)
        # each chunk differs from the last: a counter in front of a rotating block
        yield index.to_bytes(8, "big") + blocks[index % len(blocks)][: take - 8]
        sent += take
        index += 1


def mib(value: int) -> str:
    return f"{value / MIB:8.1f} MiB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--object-bytes", type=int, default=GIB)
    parser.add_argument("--ledger", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument("--service-setting", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument(
        "--api-key", default=None, help="the service is given it (preset) and the client sends it"
    )
    parser.add_argument("--timeout-seconds", type=int, default=1800)
    args = parser.parse_args()
    if args.object_bytes < 16:
        parser.error("--object-bytes must be at least 16")
    harness.install_alarm(args.timeout_seconds)

    work = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    disk = shutil.disk_usage(work)
    print("bench/memory.py: the service's RSS while one large object streams through it")
    for line in harness.machine_lines():
        print(f"  {line}")
    print(
        f"  object          {harness.size_label(args.object_bytes)}, generated as sent in "
        f"{CHUNK_BYTES // MIB} MiB chunks, with Content-Length"
    )
    print(
        "  service         serve, profile strong, multipart above 64 MiB in 16 MiB parts "
        f"(defaults), ledger {args.ledger}"
        + (f"; {', '.join(args.service_setting)}" if args.service_setting else "")
    )
    print("  store           moto server, own process (not counted in the service)")
    print(f"  {harness.pools_line(16)}")
    print(
        f"  disk            {work} : {disk.free / GIB:.1f} GiB free of {disk.total / GIB:.1f} GiB "
        f"(the spool needs {harness.size_label(args.object_bytes)})"
    )
    print(flush=True)
    if disk.free < 2 * args.object_bytes:
        print("not enough free disk for the spool", file=sys.stderr)
        return 2

    processes = harness.Processes(work, harness.base_env())
    headers = {"Content-Type": "application/octet-stream"}
    if args.api_key:
        headers["Authorization"] = f"Bearer {args.api_key}"
    try:
        with harness.ledger(args.ledger, work, "memory") as database_url:
            try:
                moto = harness.start_moto(processes)
                env = harness.service_env(
                    database_url=database_url,
                    endpoint_url=moto.url,
                    bucket=harness.unique_bucket("bench-memory"),
                    spool_dir=work / "spool",
                    profile="strong",
                    api_key=args.api_key,
                    **dict(item.split("=", 1) for item in args.service_setting),
                )
                service = harness.start_service(processes, env)
                with httpx.Client(base_url=service.url, headers=headers, timeout=600) as http:
                    return measure(args, http, service.pid, moto.pid)
            except BaseException:
                processes.print_logs()
                raise
            finally:
                processes.stop_all()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure(args: argparse.Namespace, http: httpx.Client, pid: int, moto_pid: int) -> int:
    warm = http.post("/v1/objects", params={"name": "warm-up", "wait": 30}, content=b"x" * 1024)
    if warm.status_code != 201:
        raise RuntimeError(f"warm-up: {warm.status_code} {warm.text[:300]}")
    time.sleep(IDLE_SETTLE_SECONDS)
    idle = harness.rss_bytes(pid)
    reset = harness.reset_peak_rss(pid)
    cpu = harness.CpuMeter({"service": pid, "moto": moto_pid})
    sampler = Sampler(pid)
    sampler.start()
    cpu.start()
    started = time.perf_counter()
    started_wall = datetime.now(UTC)
    answer = http.post(
        "/v1/objects",
        params={"name": "large/object", "wait": 30},
        content=body(args.object_bytes),
        headers={"Content-Length": str(args.object_bytes)},
    )
    if answer.status_code not in (201, 202):
        raise RuntimeError(f"upload: {answer.status_code} {answer.text[:300]}")
    record = answer.json()
    accepted_at = time.perf_counter()
    while record["state"] == "pending":
        record = http.get(f"/v1/objects/{record['id']}", params={"wait": 30}).json()
    verified_at = time.perf_counter()
    seconds = cpu.stop()
    sampled_peak = sampler.stop()
    peak = harness.peak_rss_bytes(pid) if reset else sampled_peak
    after = harness.rss_bytes(pid)
    client_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    moto_rss = harness.rss_bytes(moto_pid)
    added = peak - idle

    size = args.object_bytes
    print(f"state                    {record['state']} ({record.get('error')})")
    print(
        f"upload (POST answered)   {accepted_at - started:8.2f} s  "
        f"({size / 1e6 / (accepted_at - started):.0f} MB/s)"
    )
    print(f"to verified              {verified_at - started:8.2f} s")
    created = datetime.fromisoformat(record["created_at"])
    if record.get("verified_at"):
        verified = datetime.fromisoformat(record["verified_at"])
        print(
            f"  of which spooling      {(created - started_wall).total_seconds():8.2f} s "
            f"(received, hashed, written); storing in parts and the check "
            f"{(verified - created).total_seconds():.2f} s"
        )
    print(f"service idle RSS         {mib(idle)}")
    print(
        f"service peak RSS         {mib(peak)}  "
        f"({'VmHWM since reset' if reset else 'sampled'}; sampled max {mib(sampled_peak).strip()}"
        f" over {sampler.samples} samples)"
    )
    print(f"added by the upload      {mib(added)}  ({added / size:.1%} of the object)")
    print(f"service RSS afterwards   {mib(after)}")
    print(f"client peak RSS          {mib(client_peak)}  (this script, whole run)")
    print(f"moto RSS afterwards      {mib(moto_rss)}  (holds the object; not the service)")
    print(
        f"CPU seconds              client {seconds['client']:.2f}, service "
        f"{seconds['service']:.2f}, moto {seconds['moto']:.2f}"
    )
    print()
    met = added <= TARGET_ADDED_BYTES and record["state"] == "verified"
    print(
        f"target: a {harness.size_label(size)} upload adds <= 64 MiB RSS -> "
        f"{added / MIB:.1f} MiB: {harness.verdict(met)}"
    )
    return 0 if record["state"] == "verified" else 1


if __name__ == "__main__":
    sys.exit(main())
