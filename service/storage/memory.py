"""An in-memory store with the same contract as S3: for unit tests and local experiments."""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass

from service.storage.base import (
    NotFound,
    ObjectInfo,
    PreconditionFailed,
    PutRequest,
    PutResult,
    StoreCalls,
    multipart_etag,
)


@dataclass
class _Stored:
    data: bytes
    etag: str
    content_type: str


class MemoryStore:
    def __init__(self, bucket: str = "memory") -> None:
        self.bucket = bucket
        self._objects: dict[str, _Stored] = {}
        self._lock = threading.Lock()

    def put(self, request: PutRequest, calls: StoreCalls) -> PutResult:
        data = request.source.read_bytes()
        if request.part_size is None:
            etag = hashlib.md5(data).hexdigest()
        else:
            parts = [
                hashlib.md5(data[i : i + request.part_size]).hexdigest()
                for i in range(0, max(len(data), 1), request.part_size)
            ]
            etag = multipart_etag(parts)
        with calls.timed("put"), self._lock:
            if request.if_none_match and request.key in self._objects:
                raise PreconditionFailed("PreconditionFailed", "key exists", 412)
            self._objects[request.key] = _Stored(data, etag, request.content_type)
        return PutResult(etag)

    def head(self, key: str, calls: StoreCalls) -> ObjectInfo:
        with calls.timed("head"):
            stored = self._get(key)
        return ObjectInfo(size=len(stored.data), etag=stored.etag)

    def read_sha256(self, key: str, calls: StoreCalls) -> tuple[int, str]:
        with calls.timed("get"):
            stored = self._get(key)
        return len(stored.data), hashlib.sha256(stored.data).hexdigest()

    def read(self, key: str) -> bytes:
        """Test helper: the stored bytes (raises NotFound)."""
        return self._get(key).data

    def delete(self, key: str, calls: StoreCalls) -> None:
        with calls.timed("delete"), self._lock:
            self._objects.pop(key, None)

    def ensure_bucket(self) -> None:
        return None

    def ping(self) -> None:
        return None

    def _get(self, key: str) -> _Stored:
        with self._lock:
            stored = self._objects.get(key)
        if stored is None:
            raise NotFound("NoSuchKey", key, 404)
        return stored
