"""API keys and tenants."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.auth import DEFAULT_TENANT, Authenticator, Caller, create_key, parse_preset_keys
from service.ledger import api_keys
from service.ledger.database import make_engine, make_sessionmaker
from service.ledger.models import Base
from service.settings import Settings
from tests.service_process import SERVICE_BIN

A, B = "key-of-tenant-a", "key-of-tenant-b"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def upload(client: TestClient, name: str, key: str | None, **params: object) -> httpx.Response:
    headers = {"Content-Type": "text/plain", **(bearer(key) if key else {})}
    return client.post(
        "/v1/objects", params={"name": name, **params}, content=name.encode(), headers=headers
    )


def test_without_any_key_the_service_is_open_as_the_default_tenant(
    make_settings: Callable[..., Settings],
) -> None:
    with TestClient(create_app(make_settings())) as client:
        record = upload(client, "open.txt", None, wait=10).json()
    assert record["state"] == "verified" and record["key"] == "open.txt"


def test_tenants_are_kept_apart(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(API_KEYS=f"alpha:{A},beta:{B}")
    with TestClient(create_app(settings)) as client:
        for headers in ({}, bearer("wrong"), {"Authorization": f"Basic {A}"}):
            response = client.get("/v1/objects", headers=headers)
            assert response.status_code == 401, headers
            assert response.json()["code"] == "unauthorized"
            assert response.headers["www-authenticate"] == "Bearer"
        a = upload(client, "same-name.txt", A, wait=10).json()
        b = upload(client, "same-name.txt", B, wait=10).json()
        assert a["state"] == b["state"] == "verified"
        assert (a["key"], b["key"]) == ("alpha/same-name.txt", "beta/same-name.txt")
        assert httpx.get(a["url"]).content == b"same-name.txt"
        other = client.get(f"/v1/objects/{a['id']}", headers=bearer(B))
        assert other.status_code == 404 and other.json()["code"] == "not_found"
        listed = client.get("/v1/objects", headers=bearer(B)).json()["items"]
        assert [item["id"] for item in listed] == [b["id"]]


def test_a_tenants_names_leave_room_for_its_key_prefix(
    make_settings: Callable[..., Settings],
) -> None:
    """A store key (prefix + name) has at most 1024 bytes: a longer name would be
    accepted, then refused by a real store (KeyTooLong) and end `failed`."""
    with TestClient(create_app(make_settings(API_KEYS=f"alpha:{A}"))) as client:
        too_long = upload(client, "n" * (1024 - len("alpha/") + 1), A)
        assert too_long.status_code == 400 and too_long.json()["code"] == "invalid_name"
        fits = upload(client, "\u00e9" * ((1024 - len("alpha/")) // 2), A, wait=10).json()
        assert fits["state"] == "verified" and len(fits["key"].encode()) == 1024


def test_keys_in_the_ledger_work_until_revoked(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    engine = make_engine(settings.DATABASE_URL)
    sessions = make_sessionmaker(engine)
    try:
        row, key = create_key(sessions, "gamma")
        with sessions() as session:
            stored = api_keys.all_keys(session)
        assert [k.key_hash for k in stored] == [row.key_hash] and key not in row.key_hash
        with TestClient(create_app(settings)) as client:
            assert upload(client, "g", None).status_code == 401  # no longer open
            assert upload(client, "g", key, wait=10).json()["key"] == "gamma/g"
            with sessions.begin() as session:
                from datetime import UTC, datetime

                assert api_keys.revoke(session, row.key_prefix, datetime.now(UTC)) == 1
            assert client.get("/v1/objects", headers=bearer(key)).status_code == 401
            # the last key revoked does not open the API again, even once the
            # "are there any keys?" answer has gone stale
            import time

            from service.auth import OPEN_CHECK_SECONDS

            time.sleep(OPEN_CHECK_SECONDS + 0.2)
            assert client.get("/v1/objects").status_code == 401
    finally:
        engine.dispose()


def test_bad_preset_keys_stop_the_start() -> None:
    with pytest.raises(ValueError, match="API_KEYS"):
        Settings(API_KEYS="no-colon-here")
    with pytest.raises(ValueError, match="API_KEYS"):
        Settings(API_KEYS="Bad Tenant:key")


def _cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("VERIFIED_URLS_")}
    environment["VERIFIED_URLS_DATABASE_URL"] = f"sqlite:///{tmp_path / 'ledger.db'}"
    environment.update(env)
    return subprocess.run(
        [str(SERVICE_BIN), *args], env=environment, capture_output=True, text=True, timeout=60
    )


def test_keys_cli_and_refusing_to_serve_open_beyond_loopback(tmp_path: Path) -> None:
    refused = _cli(tmp_path, "serve", "--host", "0.0.0.0", "--port", "1")
    assert refused.returncode == 2 and "no API key" in refused.stderr
    created = _cli(tmp_path, "keys", "create", "--tenant", "delta")
    assert created.returncode == 0
    key = created.stdout.strip()
    assert key.startswith("vu_") and len(key) > 40
    listed = _cli(tmp_path, "keys", "list")
    assert "delta" in listed.stdout and key[:10] in listed.stdout and key not in listed.stdout
    assert _cli(tmp_path, "keys", "create", "--tenant", "Not Valid").returncode == 2
    revoked = _cli(tmp_path, "keys", "revoke", key[:10])
    assert revoked.returncode == 0 and "revoked 1" in revoked.stdout
    assert _cli(tmp_path, "keys", "revoke", key[:10]).returncode == 1


def test_callers_known_without_the_ledger_skip_it(tmp_path: Path) -> None:
    """A preset key, or open mode checked within the last seconds, needs no read;
    anything else (a ledger key, an unknown or malformed one) goes to `authenticate`."""
    engine = make_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    Base.metadata.create_all(engine)
    try:
        preset = Authenticator(make_sessionmaker(engine), parse_preset_keys(f"acme:{A}"))
        assert preset.authenticate_without_io(f"Bearer {A}") == Caller("acme")
        for header in (None, f"Bearer {B}", "Basic x", "Bearer "):
            assert preset.authenticate_without_io(header) is None
        open_mode = Authenticator(make_sessionmaker(engine), {})
        assert open_mode.authenticate_without_io(None) is None  # not checked yet
        assert open_mode.authenticate(None) == Caller(DEFAULT_TENANT)
        assert open_mode.authenticate_without_io(None) == Caller(DEFAULT_TENANT)
    finally:
        engine.dispose()
