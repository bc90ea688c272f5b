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
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3
import httpx

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(url: str, process: subprocess.Popen[bytes], timeout_seconds: float = 60) -> None:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{process.args!r} exited with {process.returncode}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit(f"{url} did not answer in {timeout_seconds} s")


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
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("VERIFIED_URLS_")},
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }
    processes: list[subprocess.Popen[bytes]] = []

    def start(
        command: list[str], log: str, extra: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        with (work / log).open("wb") as out:
            process = subprocess.Popen(
                command, cwd=work, env={**env, **(extra or {})}, stdout=out, stderr=out
            )
        processes.append(process)
        return process

    try:
        moto_port, proxy_port, service_port = free_port(), free_port(), free_port()
        moto = start(
            [str(BIN / "python"), "-m", "moto.server", "-H", "127.0.0.1", "-p", str(moto_port)],
            "moto.log",
        )
        moto_url = f"http://127.0.0.1:{moto_port}"
        wait_for(moto_url + "/moto-api/", moto)
        bucket = "soak"
        s3 = boto3.client(
            "s3",
            endpoint_url=moto_url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        s3.create_bucket(Bucket=bucket)
        policy = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": "*",
                    "Action": "s3:GetObject",
                    "Resource": f"arn:aws:s3:::{bucket}/*",
                }
            ],
        }
        s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))

        proxy_command = [
            str(BIN / "verified-urls"),
            "chaos-proxy",
            "--upstream",
            moto_url,
            "--listen",
            f"127.0.0.1:{proxy_port}",
            "--profile",
            args.profile,
            "--seed",
            str(args.seed),
            "--set",
            "slow_answer_seconds=3",
            "--log",
            str(work / "proxy.jsonl"),
        ]
        for item in args.set:
            proxy_command += ["--set", item]
        proxy = start(proxy_command, "proxy.log")
        proxy_url = f"http://127.0.0.1:{proxy_port}"
        wait_for(proxy_url + "/_chaos/stats", proxy)

        service_env = {
            "VERIFIED_URLS_S3_ENDPOINT_URL": proxy_url,
            "VERIFIED_URLS_BUCKET": bucket,
            "VERIFIED_URLS_PROFILE": "eventual",
            "VERIFIED_URLS_CHECKS": "6",
            "VERIFIED_URLS_CHECK_WINDOW_SECONDS": "12",
            "VERIFIED_URLS_RETRY_BASE_SECONDS": "0.05",
            "VERIFIED_URLS_RETRY_MAX_SECONDS": "1",
            "VERIFIED_URLS_STORE_READ_TIMEOUT_SECONDS": "2",
        }
        if args.database_url:
            service_env["VERIFIED_URLS_DATABASE_URL"] = args.database_url
        service = start(
            [
                str(BIN / "verified-urls"),
                "serve",
                "--port",
                str(service_port),
                "--log-level",
                "warning",
            ],
            "service.log",
            service_env,
        )
        service_url = f"http://127.0.0.1:{service_port}"
        wait_for(service_url + "/healthz", service)

        soak_command = [
            str(BIN / "verified-urls"),
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
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()


if __name__ == "__main__":
    sys.exit(main())
