"""`verified-urls worker`: the verifier alone, beside `serve --no-worker`, on PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import new_pg_database
from tests.service_process import SERVICE_BIN, ServiceRunner


@pytest.fixture
def pg_url(pg_template: str) -> Iterator[str]:
    url, drop = new_pg_database(pg_template)
    try:
        yield url
    finally:
        drop()


def test_a_worker_needs_a_store_endpoint(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VERIFIED_URLS_")}
    env["VERIFIED_URLS_DATABASE_URL"] = f"sqlite:///{tmp_path / 'ledger.db'}"
    result = subprocess.run(
        [str(SERVICE_BIN), "worker"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "VERIFIED_URLS_S3_ENDPOINT_URL" in result.stderr


def test_api_alone_and_a_worker_alone_share_the_ledger(
    tmp_path: Path, pg_url: str, moto_endpoint: str, bucket: str
) -> None:
    settings = {
        "VERIFIED_URLS_DATABASE_URL": pg_url,
        "VERIFIED_URLS_S3_ENDPOINT_URL": moto_endpoint,
        "VERIFIED_URLS_BUCKET": bucket,
        "VERIFIED_URLS_PROFILE": "strong",
        # a poll this slow cannot explain a prompt verification: NOTIFY must
        "VERIFIED_URLS_WORKER_POLL_SECONDS": "120",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }
    with ServiceRunner(tmp_path / "api") as runner:
        api = runner.start(settings, worker=False)
        with (tmp_path / "worker.log").open("wb") as log:
            worker = subprocess.Popen(
                [str(SERVICE_BIN), "worker"],
                cwd=runner.workdir,
                env=runner.environment(settings),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            time.sleep(3)  # the worker is listening and idle
            started = time.monotonic()
            response = httpx.post(
                f"{api.base_url}/v1/objects",
                params={"name": "shared.txt", "wait": 20},
                content=b"stored by another process",
                headers={"Content-Type": "text/plain"},
                timeout=30,
            )
            elapsed = time.monotonic() - started
            record = response.json()
            assert response.status_code == 201, record
            assert elapsed < 10, f"took {elapsed:.1f} s: the worker was not woken"
            assert httpx.get(record["url"]).content == b"stored by another process"
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(timeout=20) == 0
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    assert "worker stopped" in (tmp_path / "worker.log").read_text()
