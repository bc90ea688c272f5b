"""Shared fixtures: moto's server over real HTTP, ledgers made by the real
migrations on SQLite and on PostgreSQL, and settings for one test."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from service.ledger.database import migrate
from service.settings import Settings
from service.storage.s3 import S3Store, make_s3_client

PG_ADMIN_URL = os.environ.get("TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
PG_PREFIX = "vu_test_"
RUN_ID = f"{os.getpid()}_{uuid.uuid4().hex[:6]}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_http(url: str, timeout_seconds: float = 30.0, process: Any = None) -> None:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before {url} answered")
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout_seconds} s")


# ---------------------------------------------------------------- the store


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """moto's server in its own process, on a free loopback port."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(endpoint + "/moto-api/", process=process)
        yield endpoint
    finally:
        process.terminate()
        process.wait(timeout=10)


def s3_client(endpoint: str) -> Any:
    return make_s3_client(
        endpoint_url=endpoint,
        region="us-east-1",
        max_pool_connections=32,
        connect_timeout_seconds=5,
        read_timeout_seconds=30,
        access_key_id="testing",
        secret_access_key="testing",
    )


def public_read_policy(bucket: str) -> str:
    return json.dumps(
        {
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
    )


@pytest.fixture
def bucket(moto_endpoint: str) -> str:
    """A fresh bucket whose objects anyone may GET, as handed-out URLs need."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    client = s3_client(moto_endpoint)
    client.create_bucket(Bucket=name)
    client.put_bucket_policy(Bucket=name, Policy=public_read_policy(name))
    return name


@pytest.fixture
def s3_store(moto_endpoint: str, bucket: str) -> S3Store:
    return S3Store(s3_client(moto_endpoint), bucket, "us-east-1")


# ---------------------------------------------------------------- the ledger


def _pg_url(database: str) -> str:
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}"


def _pg_admin(sql: str) -> None:
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as connection:
        connection.execute(sql)  # type: ignore[arg-type]


def _drop_stale_pg_databases() -> None:
    """Databases of earlier runs whose process is gone (a crashed run leaves them)."""
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as connection:
        names = [
            row[0]
            for row in connection.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE %s", (PG_PREFIX + "%",)
            )
        ]
        for name in names:
            pid = name[len(PG_PREFIX) :].split("_")[0]
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """A PostgreSQL database migrated by the real migrations, copied for each test."""
    _drop_stale_pg_databases()
    name = f"{PG_PREFIX}{RUN_ID}_tpl"
    _pg_admin(f'CREATE DATABASE "{name}"')
    try:
        migrate(_pg_url(name))
        yield name
    finally:
        _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ledger") / "template.db"
    migrate(f"sqlite:///{path}")
    return path


def new_pg_database(template: str) -> tuple[str, Callable[[], None]]:
    name = f"{PG_PREFIX}{RUN_ID}_{uuid.uuid4().hex[:8]}"
    _pg_admin(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    return _pg_url(name), lambda: _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(
    request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path
) -> Iterator[str]:
    """A fresh, migrated ledger for one test: each test runs on both databases."""
    if request.param == "sqlite":
        path = tmp_path / "ledger.db"
        shutil.copy(sqlite_template, path)
        yield f"sqlite:///{path}"
        return
    template = request.getfixturevalue("pg_template")
    url, drop = new_pg_database(template)
    try:
        yield url
    finally:
        drop()


# ---------------------------------------------------------------- settings


@pytest.fixture
def make_settings(
    tmp_path: Path, database_url: str, moto_endpoint: str, bucket: str
) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "DATABASE_URL": database_url,
            "S3_ENDPOINT_URL": moto_endpoint,
            "BUCKET": bucket,
            "SPOOL_DIR": tmp_path / "spool",
            "PROFILE": "strong",
            "RETRY_BASE_SECONDS": 0.01,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "WORKER_POLL_SECONDS": 0.2,
        }
        values.update(overrides)
        return Settings(**values)

    return make
