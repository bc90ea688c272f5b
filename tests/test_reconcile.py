"""Leftovers of a crash: stale multipart uploads are aborted, stray objects reported."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from service.ledger import repository
from service.ledger.database import make_engine, make_sessionmaker
from service.ledger.models import FAILED, VERIFIED
from service.reconcile import reconcile
from service.settings import Settings
from service.storage.s3 import S3Store
from tests.conftest import s3_client
from tests.factories import object_row


def test_reconcile_aborts_stale_uploads_and_reports_strays(
    make_settings: Callable[..., Settings], moto_endpoint: str, bucket: str
) -> None:
    settings = make_settings()
    client = s3_client(moto_endpoint)
    for key in ("kept", "stray", "failed-one"):
        client.put_object(Bucket=bucket, Key=key, Body=key.encode())
    client.create_multipart_upload(Bucket=bucket, Key="crashed-mid-upload")
    engine = make_engine(settings.DATABASE_URL)
    try:
        with make_sessionmaker(engine).begin() as session:
            repository.insert_object(session, object_row(bucket=bucket, key="kept", state=VERIFIED))
            repository.insert_object(
                session, object_row(bucket=bucket, key="failed-one", state=FAILED)
            )
    finally:
        engine.dispose()

    report = reconcile(settings, abort_older_than_seconds=0)

    assert report["aborted_uploads"] == 1
    assert report["aborted_upload_keys"] == ["crashed-mid-upload"]
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert report["objects_seen"] == 3
    assert sorted(report["unaccounted"]) == ["failed-one", "stray"]
    # reported, never deleted
    keys = [item["Key"] for item in client.list_objects_v2(Bucket=bucket)["Contents"]]
    assert sorted(keys) == ["failed-one", "kept", "stray"]


class _FakeUploadsClient:
    """moto reports every upload as initiated in 2010, so the age rule is tested here."""

    def __init__(self, uploads: list[dict[str, Any]]) -> None:
        self.uploads = uploads
        self.aborted: list[str] = []

    def get_paginator(self, name: str) -> Any:
        assert name == "list_multipart_uploads"
        uploads = self.uploads

        class Pages:
            def paginate(self, **_: Any) -> list[dict[str, Any]]:
                return [{"Uploads": uploads}]

        return Pages()

    def abort_multipart_upload(self, Bucket: str, Key: str, UploadId: str) -> None:
        self.aborted.append(Key)


def test_only_uploads_older_than_the_bound_are_aborted() -> None:
    now = datetime.now(UTC)
    client = _FakeUploadsClient(
        [
            {"Key": "old", "UploadId": "1", "Initiated": now - timedelta(hours=2)},
            {"Key": "recent", "UploadId": "2", "Initiated": now - timedelta(minutes=5)},
        ]
    )
    store = S3Store(client, "bucket", "us-east-1")
    assert store.abort_stale_uploads(now - timedelta(hours=1)) == ["old"]
    assert client.aborted == ["old"]
