"""Requests per object: the store requests, by kind, that each verified object
costs, counted at the fault-injecting proxy (profile `none`: a well-behaved,
consistent store) and from the ledger's events, for the `strong` and
`eventual` profiles, in one run.

    .venv/bin/python bench/requests_per_object.py

moto's server, `verified-urls chaos-proxy --profile none --log FILE` in front
of it, and for each profile a fresh `serve` whose store is the proxy. Objects
are uploaded through the API with `wait` (a few at once) until verified; then
every line of the proxy's log whose bucket and key belong to one of them is
counted by kind, and so is every event the ledger recorded for them. Requests
that belong to no object (the bucket check at start-up, readiness pings) are
shown apart. Objects above MULTIPART_THRESHOLD_BYTES (64 MiB) are counted
apart too: a multipart upload is several requests by nature.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import harness
import httpx

KIB = 1024
MIB = 1024**2
WAIT_SECONDS = 30
PROFILES = ("strong", "eventual")


@dataclass
class Counted:
    profile: str
    kind: str  # single | multipart
    objects: int
    verified: int = 0
    proxy: Counter[str] = field(default_factory=Counter)
    ledger: Counter[str] = field(default_factory=Counter)
    cpu: dict[str, float] = field(default_factory=dict)

    def per_object(self, counter: Counter[str]) -> dict[str, float]:
        return {k: v / max(1, self.verified) for k, v in sorted(counter.items())}


def chunks(size: int, piece: int = MIB) -> Iterator[bytes]:
    """A body made as it is sent: never whole in memory."""
    block = os.urandom(piece)
    sent = 0
    while sent < size:
        take = min(piece, size - sent)
        yield block[:take]
        sent += take


def upload_all(
    http: httpx.Client, names: list[str], size: int, concurrency: int
) -> dict[str, dict[str, object]]:
    def one(name: str) -> tuple[str, dict[str, object]]:
        body: bytes | Iterator[bytes] = os.urandom(size) if size <= 8 * MIB else chunks(size)
        answer = http.post("/v1/objects", params={"name": name, "wait": WAIT_SECONDS}, content=body)
        if answer.status_code not in (201, 202):
            raise RuntimeError(f"{name}: {answer.status_code} {answer.text[:300]}")
        record: dict[str, object] = answer.json()
        while record["state"] == "pending":
            record = http.get(f"/v1/objects/{record['id']}", params={"wait": WAIT_SECONDS}).json()
        return name, record

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        return dict(pool.map(one, names))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=200, help="per profile (default 200)")
    parser.add_argument("--object-bytes", type=int, default=64 * KIB)
    parser.add_argument("--multipart-objects", type=int, default=1, help="per profile")
    parser.add_argument("--multipart-bytes", type=int, default=80 * MIB)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument(
        "--profiles",
        type=lambda text: text.split(","),
        default=list(PROFILES),
        help="strong,eventual",
    )
    parser.add_argument("--ledger", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument(
        "--api-key", default=None, help="the service is given it (preset) and the client sends it"
    )
    parser.add_argument("--timeout-seconds", type=int, default=1200)
    args = parser.parse_args()
    harness.install_alarm(args.timeout_seconds)

    print("bench/requests_per_object.py: store requests per verified object, strong and eventual")
    for line in harness.machine_lines():
        print(f"  {line}")
    print(
        f"  objects         per profile: {args.objects} x {harness.size_label(args.object_bytes)}"
        f" (single PUT) and {args.multipart_objects} x "
        f"{harness.size_label(args.multipart_bytes)} (multipart, 16 MiB parts), "
        f"{args.concurrency} at once, POST ...&wait={WAIT_SECONDS}"
    )
    print("  store           moto server behind chaos-proxy --profile none --log FILE")
    print(
        f"  service         serve, profiles {', '.join(args.profiles)} (defaults: strong 1 check, "
        f"eventual 11 checks over 120 s), ledger {args.ledger}, a fresh service per profile"
    )
    print(f"  {harness.pools_line(16)}")
    print(flush=True)

    work = Path(tempfile.mkdtemp(prefix="bench-rpo-"))
    processes = harness.Processes(work, harness.base_env())
    bucket = harness.unique_bucket("bench-rpo")
    proxy_log = work / "proxy.jsonl"
    results: list[Counted] = []
    unowned: dict[str, Counter[str]] = {}
    try:
        with harness.ledger(args.ledger, work, "rpo") as database_url:
            try:
                moto = harness.start_moto(processes)
                proxy = harness.start_proxy(processes, moto.url, profile="none", log=proxy_log)
                headers = {"Content-Type": "application/octet-stream"}
                if args.api_key:
                    headers["Authorization"] = f"Bearer {args.api_key}"
                for profile in args.profiles:
                    start_line = count_lines(proxy_log)
                    env = harness.service_env(
                        database_url=database_url,
                        endpoint_url=proxy.url,
                        bucket=bucket,
                        spool_dir=work / "spool",
                        profile=profile,
                        api_key=args.api_key,
                    )
                    service = harness.start_service(
                        processes, env, log_name=f"service-{profile}.log"
                    )
                    with httpx.Client(base_url=service.url, headers=headers, timeout=300) as http:
                        records: dict[str, dict[str, object]] = {}
                        batches = (
                            ("single", args.objects, args.object_bytes),
                            ("multipart", args.multipart_objects, args.multipart_bytes),
                        )
                        keys_by_kind: dict[str, set[str]] = {}
                        ids_by_kind: dict[str, list[str]] = {}
                        for kind, count, size in batches:
                            if count == 0:
                                continue
                            names = [f"{profile}/{kind}-{i:05d}" for i in range(count)]
                            meter = harness.CpuMeter(
                                {"service": service.pid, "moto": moto.pid, "proxy": proxy.pid}
                            )
                            meter.start()
                            done = upload_all(http, names, size, args.concurrency)
                            records.update(done)
                            counted = Counted(profile, kind, count, cpu=meter.stop())
                            counted.verified = sum(r["state"] == "verified" for r in done.values())
                            keys_by_kind[kind] = {str(r["key"]) for r in done.values()}
                            ids_by_kind[kind] = [str(r["id"]) for r in done.values()]
                            results.append(counted)
                    processes.stop(service.process)
                    lines = read_lines(proxy_log, start_line)
                    other: Counter[str] = Counter()
                    for line in lines:
                        for counted in results:
                            if counted.profile != profile:
                                continue
                            if line.get("bucket") == bucket and line.get("key") in keys_by_kind.get(
                                counted.kind, ()
                            ):
                                counted.proxy[str(line["kind"])] += 1
                                break
                        else:
                            other[f"{line['method']} {line['kind']}"] += 1
                    unowned[profile] = other
                    for counted in results:
                        if counted.profile != profile:
                            continue
                        ids = ids_by_kind[counted.kind]
                        placeholders = ", ".join(["%s"] * len(ids))
                        for action, outcome, number in harness.ledger_rows(
                            database_url,
                            "SELECT action, outcome, count(*) FROM events"
                            f" WHERE object_id IN ({placeholders}) GROUP BY action, outcome",
                            tuple(ids),
                        ):
                            label = str(action) if outcome == "ok" else f"{action} ({outcome})"
                            counted.ledger[label] += int(number)
            except BaseException:
                processes.print_logs()
                raise
            finally:
                processes.stop_all()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return report(results, unowned)


def count_lines(path: Path) -> int:
    if not path.exists():
        return 0
    with path.open("rb") as handle:
        return sum(1 for _ in handle)


def read_lines(path: Path, skip: int) -> list[dict[str, object]]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for number, line in enumerate(handle) if number >= skip]


def by_action(counter: Counter[str]) -> Counter[str]:
    """Ledger labels without their outcome, to compare with the proxy's kinds."""
    out: Counter[str] = Counter()
    for label, value in counter.items():
        out[label.split(" ")[0]] += value
    return out


def report(results: list[Counted], unowned: dict[str, Counter[str]]) -> int:
    print(
        f"{'profile':>8} {'kind':>9} {'objects':>7} {'verified':>8} | {'proxy/object':>12} "
        f"{'ledger/object':>13} | agree"
    )
    for counted in results:
        proxy = sum(counted.per_object(counted.proxy).values())
        ledger = sum(counted.per_object(counted.ledger).values())
        agree = counted.proxy == by_action(counted.ledger)
        print(
            f"{counted.profile:>8} {counted.kind:>9} {counted.objects:>7} {counted.verified:>8} | "
            f"{proxy:>12.2f} {ledger:>13.2f} | {'yes' if agree else 'NO'}"
        )
    print()
    print("by kind, per verified object (proxy | ledger):")
    for counted in results:
        proxy_text = ", ".join(f"{k} {v:.2f}" for k, v in counted.per_object(counted.proxy).items())
        ledger_text = ", ".join(
            f"{k} {v:.2f}" for k, v in counted.per_object(counted.ledger).items()
        )
        print(f"  {counted.profile:>8} {counted.kind:>9}: {proxy_text} | {ledger_text}")
    print()
    print("CPU ms per object (all threads of each process; client = this script):")
    names = ("client", "service", "moto", "proxy")
    print(f"  {'profile':>8} {'kind':>9} " + " ".join(f"{n:>8}" for n in names))
    for counted in results:
        cells = [1000 * counted.cpu.get(n, 0.0) / max(1, counted.objects) for n in names]
        print(f"  {counted.profile:>8} {counted.kind:>9} " + " ".join(f"{c:>8.2f}" for c in cells))
    print()
    for profile, other in unowned.items():
        text = ", ".join(f"{k} x{v}" for k, v in sorted(other.items())) or "none"
        print(f"  {profile}: requests of no object (start-up, readiness): {text}")
    print()
    ok = all(c.verified == c.objects and c.proxy == by_action(c.ledger) for c in results)
    strong = next((c for c in results if c.profile == "strong" and c.kind == "single"), None)
    if strong is not None:
        per_object = sum(strong.per_object(strong.proxy).values())
        print(
            f"target: <= 2 store requests per verified object, strong, consistent store, at the "
            f"proxy -> {per_object:.2f}: {harness.verdict(per_object <= 2.0)}"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
