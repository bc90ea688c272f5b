"""The proof, sized for `make test`: a few hundred objects through the real
service process, whose store (and whose handed-out URLs) go through the
fault-injecting proxy with every fault kind on; then every URL is checked,
also directly against moto behind the proxy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port, public_read_policy, s3_client, wait_for_http
from tests.service_process import ServiceRunner

SOAK_OBJECTS = 300
FAULT_KINDS = (
    "error_403",
    "error_500",
    "error_503",
    "error_429",
    "lost_put",
    "corrupt",
    "slow_answer",
    "reset",
    "late_visibility",
)


@pytest.fixture
def madness_proxy(moto_endpoint: str, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "service.cli",
            "chaos-proxy",
            "--upstream",
            moto_endpoint,
            "--listen",
            f"127.0.0.1:{port}",
            "--profile",
            "eventual-madness",
            "--seed",
            "7",
            # the schedule is shrunk for the run; the logic stays the same
            "--set",
            "slow_answer_seconds=3",
            "--set",
            "visibility_delay_max_seconds=3",
            # a few hundred objects: raise the rare kinds so each one shows up
            "--set",
            "lost_put=0.03",
            "--set",
            "corrupt=0.03",
            "--set",
            "slow_answer=0.02",
            "--set",
            "reset=0.02",
            "--log",
            str(tmp_path / "proxy.jsonl"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(url + "/_chaos/stats", process=process)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_soak_hands_out_no_dead_url(moto_endpoint: str, madness_proxy: str, tmp_path: Path) -> None:
    bucket = "soak-bucket"
    client = s3_client(moto_endpoint)
    client.create_bucket(Bucket=bucket)
    client.put_bucket_policy(Bucket=bucket, Policy=public_read_policy(bucket))
    settings = {
        "VERIFIED_URLS_S3_ENDPOINT_URL": madness_proxy,
        "VERIFIED_URLS_BUCKET": bucket,
        "VERIFIED_URLS_PROFILE": "eventual",
        "VERIFIED_URLS_CHECKS": "6",
        "VERIFIED_URLS_CHECK_WINDOW_SECONDS": "8",
        "VERIFIED_URLS_RETRY_BASE_SECONDS": "0.05",
        "VERIFIED_URLS_RETRY_MAX_SECONDS": "1",
        "VERIFIED_URLS_STORE_READ_TIMEOUT_SECONDS": "2",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }
    report_path = tmp_path / "soak.json"
    with ServiceRunner(tmp_path / "service") as runner:
        service = runner.start(settings)
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "service.cli",
                "soak",
                "--service",
                service.base_url,
                "--store-direct",
                moto_endpoint,
                "--objects",
                str(SOAK_OBJECTS),
                "--concurrency",
                "16",
                "--max-bytes",
                str(256 * 1024),
                "--deadline-seconds",
                "240",
                "--json",
                str(report_path),
            ],
            capture_output=True,
            text=True,
            timeout=480,
            env={**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"},
        )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(report_path.read_text())
    print(json.dumps(report, indent=1))
    assert report["accepted"] == SOAK_OBJECTS
    assert report["verified"] == SOAK_OBJECTS
    for figure in (
        "dead_urls",
        "wrong_bytes",
        "still_pending",
        "missing_from_ledger",
        "failed",
        "direct_missing",
        "direct_wrong_bytes",
    ):
        assert report[figure] == 0, figure
    injected = report["faults_injected"]
    for kind in FAULT_KINDS:
        assert injected[kind] > 0, f"{kind} was never injected: the run proves nothing about it"
    # one PUT (or a few) and a few checks per object, not an unbounded loop
    assert 1 <= report["store_requests_per_object"]["put"] < 3
    assert report["seconds_to_verified_p50"] is not None
