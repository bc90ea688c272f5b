"""DELETE: no URL ever again, the bytes purged from the store, the name free after."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from botocore.exceptions import ClientError
from fastapi.testclient import TestClient

from service.app import create_app
from service.ledger import repository
from service.ledger.database import make_engine, make_sessionmaker
from service.settings import Settings
from tests.conftest import s3_client


def in_store(moto_endpoint: str, bucket: str, key: str) -> bool:
    try:
        s3_client(moto_endpoint).head_object(Bucket=bucket, Key=key)
    except ClientError:
        return False
    return True


def wait_for(condition: Callable[[], bool], seconds: float = 15) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def test_deleting_a_verified_object(
    make_settings: Callable[..., Settings], moto_endpoint: str, bucket: str
) -> None:
    with TestClient(create_app(make_settings())) as client:
        record = client.post(
            "/v1/objects", params={"name": "gone.txt", "wait": 10}, content=b"bytes"
        ).json()
        assert record["state"] == "verified" and in_store(moto_endpoint, bucket, "gone.txt")
        deleted = client.delete(f"/v1/objects/{record['id']}")
        assert deleted.status_code == 200
        assert deleted.json()["state"] == "deleted" and deleted.json()["url"] is None
        assert wait_for(lambda: not in_store(moto_endpoint, bucket, "gone.txt"))
        assert client.get(f"/v1/objects/{record['id']}").json()["url"] is None
        again = client.delete(f"/v1/objects/{record['id']}")
        assert again.status_code == 200 and again.json()["state"] == "deleted"
        listed = client.get("/v1/objects", params={"state": "deleted"}).json()["items"]
        assert [item["id"] for item in listed] == [record["id"]]

        # the name is free again once the bytes are gone, and the new object stays
        def reupload() -> bool:
            response = client.post(
                "/v1/objects", params={"name": "gone.txt", "wait": 10}, content=b"new bytes"
            )
            return response.status_code == 201

        assert wait_for(reupload)
        time.sleep(0.5)
        assert in_store(moto_endpoint, bucket, "gone.txt")
        url = record["url"]
        assert httpx.get(url).content == b"new bytes"


def test_deleting_a_pending_object_stops_its_work(
    make_settings: Callable[..., Settings], moto_endpoint: str, bucket: str, tmp_path: Path
) -> None:
    settings = make_settings()
    with TestClient(create_app(settings, run_worker=False)) as client:
        record = client.post("/v1/objects", params={"name": "never"}, content=b"x").json()
        assert record["state"] == "pending"
        assert client.delete(f"/v1/objects/{record['id']}").json()["state"] == "deleted"
    assert list((tmp_path / "spool").iterdir()) == []
    with TestClient(create_app(settings)) as client:
        engine = make_engine(settings.DATABASE_URL)
        sessions = make_sessionmaker(engine)

        def purged() -> bool:
            with sessions() as session:
                row = repository.get_object(session, "default", record["id"])
            return row is not None and row.phase == "done"

        try:
            assert wait_for(purged)
            with sessions() as session:
                actions = [e.action for e in repository.events_for(session, record["id"])]
        finally:
            engine.dispose()
        assert client.get(f"/v1/objects/{record['id']}").json()["state"] == "deleted"
    assert "put" not in actions and actions[:2] == ["delete", "head"]
    assert not in_store(moto_endpoint, bucket, "never")


@pytest.mark.parametrize("object_id", ["nope", "0" * 32])
def test_deleting_an_unknown_object_is_404(
    make_settings: Callable[..., Settings], object_id: str
) -> None:
    with TestClient(create_app(make_settings(), run_worker=False)) as client:
        response = client.delete(f"/v1/objects/{object_id}")
    assert response.status_code == 404 and response.json()["code"] == "not_found"
