"""One contract that every store implementation passes."""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from service.storage.base import (
    NotFound,
    ObjectStore,
    PreconditionFailed,
    PutRequest,
    Rejected,
    StoreCalls,
    multipart_etag,
)
from service.storage.memory import MemoryStore
from service.storage.s3 import PartReader, S3Store

MIB = 1024 * 1024


@pytest.fixture(params=["memory", "s3"])
def store(request: pytest.FixtureRequest) -> ObjectStore:
    if request.param == "memory":
        return MemoryStore()
    s3: S3Store = request.getfixturevalue("s3_store")
    return s3


def spooled(tmp_path: Path, data: bytes, part_size: int | None = None) -> Callable[..., PutRequest]:
    path = tmp_path / hashlib.sha256(data).hexdigest()
    path.write_bytes(data)
    parts: tuple[str, ...] = ()
    if part_size is not None:
        parts = tuple(
            hashlib.md5(data[i : i + part_size]).hexdigest() for i in range(0, len(data), part_size)
        )

    def make(key: str, **overrides: object) -> PutRequest:
        values: dict[str, object] = dict(
            key=key,
            source=path,
            size=len(data),
            md5_hex=hashlib.md5(data).hexdigest(),
            content_type="application/octet-stream",
            part_size=part_size,
            part_md5s=parts,
        )
        values.update(overrides)
        return PutRequest(**values)  # type: ignore[arg-type]

    return make


def test_put_then_head_and_read_back(store: ObjectStore, tmp_path: Path) -> None:
    data = b"hello, store"
    calls = StoreCalls()
    result = store.put(spooled(tmp_path, data)("a b+c%d/ü.txt"), calls)
    assert result.etag == hashlib.md5(data).hexdigest()
    info = store.head("a b+c%d/ü.txt", calls)
    assert (info.size, info.etag) == (len(data), result.etag)
    assert store.read_sha256("a b+c%d/ü.txt", calls) == (
        len(data),
        hashlib.sha256(data).hexdigest(),
    )
    assert [c.action for c in calls.calls] == ["put", "head", "get"]
    assert all(c.outcome == "ok" and c.latency_seconds >= 0 for c in calls.calls)


def test_zero_bytes_is_an_object(store: ObjectStore, tmp_path: Path) -> None:
    store.put(spooled(tmp_path, b"")("empty"), StoreCalls())
    info = store.head("empty", StoreCalls())
    assert info.size == 0 and info.etag == hashlib.md5(b"").hexdigest()


def test_missing_key_raises_not_found_and_is_recorded(store: ObjectStore) -> None:
    calls = StoreCalls()
    with pytest.raises(NotFound):
        store.head("nope", calls)
    with pytest.raises(NotFound):
        store.read_sha256("nope", calls)
    assert [c.outcome for c in calls.calls] == ["not_found", "not_found"]


def test_if_none_match_refuses_a_taken_key(store: ObjectStore, tmp_path: Path) -> None:
    make = spooled(tmp_path, b"first")
    store.put(make("k"), StoreCalls())
    calls = StoreCalls()
    with pytest.raises(PreconditionFailed):
        store.put(spooled(tmp_path, b"second")("k"), calls)
    assert calls.calls[-1].outcome == "precondition_failed"
    store.put(spooled(tmp_path, b"second")("k", if_none_match=False), StoreCalls())
    assert store.read_sha256("k", StoreCalls())[1] == hashlib.sha256(b"second").hexdigest()


def test_delete_removes_and_tolerates_missing(store: ObjectStore, tmp_path: Path) -> None:
    store.put(spooled(tmp_path, b"x")("gone"), StoreCalls())
    store.delete("gone", StoreCalls())
    store.delete("gone", StoreCalls())
    with pytest.raises(NotFound):
        store.head("gone", StoreCalls())


def test_multipart_etag_is_computable_from_part_md5s(store: ObjectStore, tmp_path: Path) -> None:
    data = os.urandom(5 * MIB) + os.urandom(1 * MIB + 7)
    make = spooled(tmp_path, data, part_size=5 * MIB)
    request = make("multi")
    result = store.put(request, StoreCalls())
    assert result.etag == multipart_etag(request.part_md5s)
    assert store.head("multi", StoreCalls()).etag == result.etag
    assert store.read_sha256("multi", StoreCalls()) == (len(data), hashlib.sha256(data).hexdigest())


def test_s3_translates_errors_keeping_the_code(moto_endpoint: str, tmp_path: Path) -> None:
    from tests.conftest import s3_client

    store = S3Store(s3_client(moto_endpoint), "no-such-bucket-here", "us-east-1")
    calls = StoreCalls()
    with pytest.raises(Rejected) as raised:
        store.put(spooled(tmp_path, b"x")("k"), calls)
    assert raised.value.code == "NoSuchBucket"
    assert calls.calls[0].error_code == "NoSuchBucket" and calls.calls[0].http_status == 404


def test_s3_unreachable_is_unavailable(tmp_path: Path) -> None:
    from service.storage.base import Unavailable
    from tests.conftest import free_port, s3_client

    store = S3Store(s3_client(f"http://127.0.0.1:{free_port()}"), "b", "us-east-1")
    with pytest.raises(Unavailable) as raised:
        store.head("k", StoreCalls())
    assert raised.value.code == "EndpointConnectionError"


def test_a_part_reader_is_a_stream_of_its_slice_alone() -> None:
    data = bytes(range(256)) * 100
    reader = PartReader(io.BytesIO(data), 1000, 5000)
    assert reader.read(10) == data[1000:1010]
    assert reader.tell() == 10
    assert reader.seek(0, io.SEEK_END) == 5000  # how a sender learns its length
    assert reader.seek(0) == 0
    assert reader.read() == data[1000:6000]
    assert reader.read(5) == b""
    reader.seek(4990)
    assert reader.read(100) == data[5990:6000]
    assert not hasattr(reader, "fileno")
