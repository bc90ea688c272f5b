"""`verified-urls migrate` (and so `serve`) is safe when several processes start at once."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text

from service.ledger.database import alembic_config
from tests.conftest import PG_PREFIX, RUN_ID, _pg_admin, _pg_url

PROCESSES = 4


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh' / 'ledger.db'}"
        return
    name = f"{PG_PREFIX}{RUN_ID}_{uuid.uuid4().hex[:8]}"
    _pg_admin(f'CREATE DATABASE "{name}"')
    try:
        yield _pg_url(name)
    finally:
        _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_concurrent_migrations_all_succeed(empty_database_url: str) -> None:
    env = {**os.environ, "VERIFIED_URLS_DATABASE_URL": empty_database_url}
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "service.cli", "migrate"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for _ in range(PROCESSES)
    ]
    outputs = [process.communicate(timeout=120)[0].decode() for process in processes]
    assert [p.returncode for p in processes] == [0] * PROCESSES, outputs
    engine = create_engine(empty_database_url)
    try:
        with engine.connect() as connection:
            versions = connection.execute(text("SELECT version_num FROM alembic_version")).all()
            tables = set(inspect(connection).get_table_names())
    finally:
        engine.dispose()
    head = ScriptDirectory.from_config(alembic_config(empty_database_url)).get_current_head()
    assert versions == [(head,)]
    assert {"objects", "events"} <= tables
