"""The store interface: small, key-based, and explicit about what it raises.

Every implementation (S3 over boto3, in memory) passes one contract suite
(tests/test_store_contract.py). Each call may make several requests to the
store (a multipart upload does); every one of them is reported to the
caller's `StoreCalls` list, so the ledger can record each as an event.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


class StoreError(Exception):
    """Base of every store failure. `code` is the store's own error code."""

    def __init__(self, code: str, detail: str = "", http_status: int | None = None) -> None:
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code
        self.detail = detail
        self.http_status = http_status


class NotFound(StoreError):
    """The key does not exist (or is not visible to this reader yet)."""


class PreconditionFailed(StoreError):
    """A conditional PUT (If-None-Match: *) found the key already taken."""


class Unavailable(StoreError):
    """A transient failure: any error code, a timeout, a reset. Worth retrying."""


class Rejected(StoreError):
    """A permanent answer (EntityTooLarge, NoSuchBucket...): retrying cannot help."""


@dataclass(frozen=True)
class ObjectInfo:
    size: int
    etag: str  # without quotes
    version_id: str | None = None
    server_side_encryption: str | None = None


@dataclass(frozen=True)
class PutResult:
    etag: str
    version_id: str | None = None


@dataclass(frozen=True)
class PutRequest:
    """What to store. `part_size` and `part_md5s` are set when it goes up in parts."""

    key: str
    source: Path
    size: int
    md5_hex: str
    content_type: str
    part_size: int | None = None
    part_md5s: tuple[str, ...] = ()
    if_none_match: bool = True


@dataclass
class StoreCall:
    """One request to the store and how it went: the raw material of an event."""

    action: str
    outcome: str  # ok | error | not_found | precondition_failed
    latency_seconds: float
    error_code: str | None = None
    detail: str | None = None
    http_status: int | None = None


@dataclass
class StoreCalls:
    calls: list[StoreCall] = field(default_factory=list)

    @contextmanager
    def timed(self, action: str) -> Iterator[None]:
        """Records one request; an exception passing through is recorded with its code."""
        started = time.monotonic()
        try:
            yield
        except StoreError as exc:
            outcome = {NotFound: "not_found", PreconditionFailed: "precondition_failed"}.get(
                type(exc), "error"
            )
            self.calls.append(
                StoreCall(
                    action,
                    outcome,
                    time.monotonic() - started,
                    exc.code,
                    exc.detail[:500],
                    exc.http_status,
                )
            )
            raise
        self.calls.append(StoreCall(action, "ok", time.monotonic() - started))


class ObjectStore(Protocol):
    def put(self, request: PutRequest, calls: StoreCalls) -> PutResult:
        """Stores the spooled file under `request.key`, in parts when `part_size` is set.

        Raises PreconditionFailed when `if_none_match` is set and the key exists,
        Rejected on a permanent answer, Unavailable on anything else. A failed
        multipart upload is aborted (best effort) before raising.
        """
        ...

    def head(self, key: str, calls: StoreCalls) -> ObjectInfo:
        """Size and ETag of the key. Raises NotFound, or Unavailable (403/5xx/timeout)."""
        ...

    def read_sha256(self, key: str, calls: StoreCalls) -> tuple[int, str]:
        """Reads the bytes back, returns (size, sha256 hex). Raises NotFound or Unavailable."""
        ...

    def delete(self, key: str, calls: StoreCalls) -> None:
        """Deletes the key; a missing key is not an error. Raises Unavailable."""
        ...

    def ensure_bucket(self) -> None:
        """Creates the bucket if it is missing. Raises Unavailable or Rejected."""
        ...

    def ping(self) -> None:
        """Raises Unavailable unless the bucket answers."""
        ...


def multipart_etag(part_md5s: tuple[str, ...] | list[str]) -> str:
    """The ETag S3 gives a multipart upload: MD5 of the parts' binary MD5s, dash, count."""
    digest = hashlib.md5(b"".join(bytes.fromhex(m) for m in part_md5s))
    return f"{digest.hexdigest()}-{len(part_md5s)}"
