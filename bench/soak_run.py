"""One command for the whole proof: moto's server, the fault-injecting proxy in
front of it, the service pointed at the proxy, and `verified-urls soak`.

    .venv/bin/python bench/soak_run.py --objects 2000 --concurrency 16

Everything listens on free loopback ports and stops at the end. The
verification schedule is shrunk (the logic stays the same) so that the run
takes minutes: 6 checks over 12 s, retries from 0.05 s, a 2 s read timeout.
Exits with the soak's status.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import harness


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-bytes", type=int, default=256 * 1024)
    parser.add_argument("--profile", default="eventual-madness")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--set", action="append", default=[], help="proxy overrides NAME=VALUE")
    parser.add_argument("--database-url", default=None, help="default: a SQLite file")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--api-key", default=None)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="soak-"))
    env = harness.base_env()
    processes = harness.Processes(work, env)
    try:
        moto = harness.start_moto(processes)
        bucket = "soak"
        s3 = harness.s3_client(moto.url)
        s3.create_bucket(Bucket=bucket)
        harness.allow_anonymous_get(s3, bucket)
        proxy = harness.start_proxy(
            processes,
            moto.url,
            profile=args.profile,
            seed=args.seed,
            log=work / "proxy.jsonl",
            settings=["slow_answer_seconds=3", *args.set],
        )
        service_settings: dict[str, object] = {
            "CHECKS": 6,
            "CHECK_WINDOW_SECONDS": 12,
            "RETRY_BASE_SECONDS": 0.05,
            "RETRY_MAX_SECONDS": 1,
            "STORE_READ_TIMEOUT_SECONDS": 2,
        }
        service_env = harness.service_env(
            database_url=args.database_url or "sqlite:///./data/ledger.db",
            endpoint_url=proxy.url,
            bucket=bucket,
            spool_dir=Path("./data/spool"),
            profile="eventual",
            **service_settings,
        )
        service = harness.start_service(processes, service_env)
        service_url, moto_url, proxy_url = service.url, moto.url, proxy.url

        soak_command = [
            str(harness.BIN / "verified-urls"),
            "soak",
            "--service",
            service_url,
            "--store-direct",
            moto_url,
            "--objects",
            str(args.objects),
            "--concurrency",
            str(args.concurrency),
            "--max-bytes",
            str(args.max_bytes),
        ]
        if args.json:
            soak_command += ["--json", str(args.json.resolve())]
        if args.api_key:
            soak_command += ["--api-key", args.api_key]
        print(
            f"work dir {work}; proxy {proxy_url} ({args.profile}, seed {args.seed})",
            file=sys.stderr,
        )
        return subprocess.run(soak_command, env=env, check=False).returncode
    finally:
        processes.stop_all()


if __name__ == "__main__":
    sys.exit(main())
