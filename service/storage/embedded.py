"""The embedded S3 store: moto's S3 server, with every object kept on disk.

moto keeps objects in memory only, so a restart would turn every URL already
handed out into a dead link. This module runs moto's S3 app in its own process
behind a WSGI middleware that makes it durable and public-read:

    python -m service.storage.embedded --host 127.0.0.1 --port 9000 \\
        --data-dir ./data/store --bucket verified-urls --region us-east-1

The parent (the service) uses :class:`EmbeddedStoreProcess` to start and stop it.

On disk (``--data-dir``)::

    buckets/<bucket>/bucket.json                       name and region
    buckets/<bucket>/objects/<sha256(key)>.json        the object's record
    buckets/<bucket>/objects/<sha256(key)>.<sha256(bytes)>.data

Persistence. A signed PutObject, CopyObject or CompleteMultipartUpload that moto
answers with 2xx is followed, before the response is released to the client, by
copying the key's current bytes out of moto's backend into a temporary file
(fsync), renaming it to its content-addressed name (fsync of the directory),
then replacing the record the same way. The record is the commit point: a crash
at any step leaves either the old object or the new one, and stray files are
removed at the next start. DeleteObject and DeleteObjects remove the record,
then the data. Writes to one key are serialised (the moto call included), which
also makes moto's check-then-write ``If-None-Match: *`` atomic. If the copy to
disk fails, the client gets 500 InternalError, never a 2xx.

Restore. Before the port serves anything, every bucket on disk (and ``--bucket``,
in ``--region``) is created, the bucket policy below is set, and every record is
loaded back through moto's backend API, streaming the data file into the key's
buffer and checking its SHA-256. Content type, user metadata, Last-Modified and
the ETag are kept; a multipart object keeps its multipart ETag (``<md5>-<n>``),
although moto forgets its part layout (no ``partNumber`` reads after a restart).
Not kept: tags, ACLs, version history, echoed checksum values, bucket
configuration other than the default policy, unfinished multipart uploads.

Access. moto does not verify signatures, so "signed" means "carries one": an
``Authorization`` header or an ``X-Amz-Signature`` / ``Signature`` query
parameter. Signed requests pass through. Anonymous requests may only GET or
HEAD an object (``/bucket/key``, no sub-resource such as ``?acl``); anything
else anonymous is 403 AccessDenied. moto enforces the bucket policy only for
reads of existing objects, so the policy set at start-up (anonymous
``s3:GetObject`` and moto's own ``s3:HeadObject``) is what lets anonymous reads
through, and this middleware is what keeps anonymous listing and writes out.
Only path-style requests are served (virtual-host style is 400), and
header-signed POST uploads to a bucket (PostObject) are 501: the key they write
is not known before moto handles them, so they could not be made durable.
Keys are read from the path exactly as moto reads them (percent-decoded as
UTF-8; a ``+`` stays a plus, it is not a space).

Process. The child binds its port before restoring, so a taken port fails at
once; it writes one line to stdout when it serves. Given ``--parent-pid`` it
asks the kernel (``PR_SET_PDEATHSIG``) for SIGTERM when the parent dies, even
by SIGKILL, so a dead service never leaves the port taken. SIGTERM/SIGINT stop
it after the writes in progress (at most 5 s).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import ctypes
import datetime
import hashlib
import http.client
import io
import json
import logging
import os
import queue
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote
from xml.etree import ElementTree
from xml.sax.saxutils import escape

from service.storage.subresources import CONFIGURATION_SUBRESOURCES

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

    from moto.s3.models import FakeBucket, FakeKey, S3Backend

_log = logging.getLogger(__name__)

READY_LINE = b"embedded-store ready\n"
_CHUNK_BYTES = 1024 * 1024
_RECORD_VERSION = 1
_TMP_PREFIX = ".tmp-"
_SAFE_BUCKET_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_")

# S3 sub-resources: a query naming one of these is not a plain object read.
_SUBRESOURCES = CONFIGURATION_SUBRESOURCES | {
    "delete",
    "select-type",
    "session",
    "uploadId",
    "uploads",
    "versionId",
    "versions",
}
# Sub-resources of a PUT/DELETE on an object that leave its bytes alone.
_OBJECT_SIDE_RESOURCES = frozenset(
    {"acl", "legal-hold", "partNumber", "retention", "tagging", "uploadId"}
)


def key_id(key: str) -> str:
    """The file-name stem of an object: keys may hold any character, hashes do not."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------- disk


@dataclass(frozen=True)
class ObjectRecord:
    """What the disk keeps about one object besides its bytes."""

    bucket: str
    key: str
    size: int
    sha256: str
    etag: str
    content_type: str | None
    metadata: dict[str, str]
    last_modified: str
    data_file: str

    def to_json(self) -> bytes:
        fields = {"version": _RECORD_VERSION, **self.__dict__}
        return json.dumps(fields, ensure_ascii=False, indent=1).encode("utf-8")

    @classmethod
    def from_json(cls, raw: bytes) -> ObjectRecord:
        """ValueError unless raw is a record this version wrote."""
        fields = json.loads(raw)
        if not isinstance(fields, dict) or fields.pop("version", None) != _RECORD_VERSION:
            raise ValueError("not a record of a known version")
        try:
            return cls(**fields)
        except TypeError as error:
            raise ValueError(str(error)) from error


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_synced(path: Path, chunks: Iterable[bytes]) -> tuple[int, str]:
    """Write chunks to a new file and fsync it; returns size and SHA-256."""
    digest = hashlib.sha256()
    size = 0
    with path.open("xb") as target:
        for chunk in chunks:
            target.write(chunk)
            digest.update(chunk)
            size += len(chunk)
        target.flush()
        os.fsync(target.fileno())
    return size, digest.hexdigest()


def _replace_durably(tmp: Path, final: Path) -> None:
    os.replace(tmp, final)
    _fsync_dir(final.parent)


class DiskStore:
    """Objects and bucket names under one data directory, each change atomic."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def bucket_dir(self, bucket: str) -> Path:
        # Bucket names become directory names, so refuse anything path-like.
        if not bucket or bucket[0] == "." or not set(bucket) <= _SAFE_BUCKET_CHARS:
            raise ValueError(f"bucket name {bucket!r} cannot be kept on disk")
        return self.root / "buckets" / bucket

    def objects_dir(self, bucket: str) -> Path:
        return self.bucket_dir(bucket) / "objects"

    def record_bucket(self, bucket: str, region: str) -> None:
        objects = self.objects_dir(bucket)
        objects.mkdir(parents=True, exist_ok=True)
        payload = json.dumps({"name": bucket, "region": region}).encode("utf-8")
        self._write_small(objects.parent / "bucket.json", payload)

    def forget_bucket(self, bucket: str) -> None:
        directory = self.bucket_dir(bucket)
        if directory.exists():
            shutil.rmtree(directory)
            _fsync_dir(directory.parent)

    def buckets(self) -> list[tuple[str, str]]:
        """(name, region) of every bucket on disk."""
        found = []
        for description in sorted(self.root.glob("buckets/*/bucket.json")):
            fields = json.loads(description.read_bytes())
            found.append((str(fields["name"]), str(fields["region"])))
        return found

    def write_object(
        self,
        bucket: str,
        key: str,
        chunks: Iterable[bytes],
        *,
        expected_size: int,
        etag: str,
        metadata: dict[str, str],
        last_modified: datetime.datetime,
    ) -> ObjectRecord:
        objects = self.objects_dir(bucket)
        objects.mkdir(parents=True, exist_ok=True)
        stem = key_id(key)
        tmp = objects / f"{_TMP_PREFIX}{uuid.uuid4().hex}"
        try:
            size, sha256 = _write_synced(tmp, chunks)
            if size != expected_size:
                raise OSError(f"read {size} bytes of {key!r}, expected {expected_size}")
            data_file = f"{stem}.{sha256}.data"
            _replace_durably(tmp, objects / data_file)
        finally:
            tmp.unlink(missing_ok=True)
        previous = self._previous_data_file(bucket, key)
        record = ObjectRecord(
            bucket=bucket,
            key=key,
            size=size,
            sha256=sha256,
            etag=etag,
            content_type=_content_type(metadata),
            metadata=metadata,
            last_modified=last_modified.isoformat(),
            data_file=data_file,
        )
        self._write_small(objects / f"{stem}.json", record.to_json())
        if previous is not None and previous != data_file:
            (objects / previous).unlink(missing_ok=True)
        return record

    def delete_object(self, bucket: str, key: str) -> None:
        objects = self.objects_dir(bucket)
        record_path = objects / f"{key_id(key)}.json"
        if not record_path.exists():
            return
        data_file = self._previous_data_file(bucket, key)
        # The record goes first: without it the data file is garbage, never an object.
        record_path.unlink()
        _fsync_dir(objects)
        if data_file is not None:
            (objects / data_file).unlink(missing_ok=True)

    def read_record(self, bucket: str, key: str) -> ObjectRecord | None:
        """None if the key has no record; ValueError if its record is unreadable."""
        path = self.objects_dir(bucket) / f"{key_id(key)}.json"
        try:
            return ObjectRecord.from_json(path.read_bytes())
        except FileNotFoundError:
            return None

    def _previous_data_file(self, bucket: str, key: str) -> str | None:
        try:
            record = self.read_record(bucket, key)
        except ValueError:
            # A damaged record must not block replacing it; the next start removes its data.
            return None
        return record.data_file if record is not None else None

    def records(self, bucket: str) -> Iterator[ObjectRecord]:
        """Every readable record of a bucket, after removing files no record needs."""
        objects = self.objects_dir(bucket)
        if not objects.is_dir():
            return
        keep: set[str] = set()
        readable: list[ObjectRecord] = []
        for path in sorted(objects.glob("*.json")):
            try:
                record = ObjectRecord.from_json(path.read_bytes())
            except ValueError as error:
                # Keep its data: the record may be fixable by hand, the bytes are not.
                _log.error("unreadable record %s (%s); skipped", path, error)
                keep.update(p.name for p in objects.glob(f"{path.stem}.*.data"))
                continue
            if key_id(record.key) != path.stem or record.bucket != bucket:
                _log.error("record %s is not where it belongs; skipped", path)
                continue
            keep.add(record.data_file)
            readable.append(record)
        self._remove_strays(objects, keep)
        yield from readable

    def data_path(self, record: ObjectRecord) -> Path:
        return self.objects_dir(record.bucket) / record.data_file

    @staticmethod
    def _remove_strays(objects: Path, keep: set[str]) -> None:
        for path in objects.iterdir():
            stray = path.name.startswith(_TMP_PREFIX) or (
                path.suffix == ".data" and path.name not in keep
            )
            if stray:
                _log.info("removing leftover %s", path.name)
                path.unlink(missing_ok=True)

    @staticmethod
    def _write_small(path: Path, payload: bytes) -> None:
        tmp = path.with_name(f"{_TMP_PREFIX}{uuid.uuid4().hex}")
        try:
            _write_synced(tmp, [payload])
            _replace_durably(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def _content_type(metadata: dict[str, str]) -> str | None:
    for name, value in metadata.items():
        if name.lower() == "content-type":
            return value
    return None


# --------------------------------------------------------------------------- moto


class _KeyVanished(Exception):
    """moto disposed of the key while its bytes were being copied."""


def _public_read_policy(bucket: str) -> dict[str, Any]:
    # moto checks anonymous HEADs against "s3:HeadObject", which AWS does not have.
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "AnonymousReadObjects",
                "Effect": "Allow",
                "Principal": "*",
                "Action": ["s3:GetObject", "s3:HeadObject"],
                "Resource": f"arn:aws:s3:::{bucket}/*",
            }
        ],
    }


class MotoObjects:
    """The few operations on moto's in-memory S3 backend that persistence needs."""

    def bucket(self, name: str) -> FakeBucket | None:
        from moto.s3.models import s3_backends

        owner = s3_backends.bucket_accounts.get(name)
        if owner is None:
            return None
        partition, account = owner
        return s3_backends[account][partition].buckets.get(name)

    def current_key(self, bucket: str, key: str) -> FakeKey | None:
        from moto.s3.models import FakeKey

        found = self.bucket(bucket)
        current = found.keys.get(key) if found is not None else None
        return current if isinstance(current, FakeKey) else None

    def ensure_bucket(self, name: str, region: str) -> None:
        if self.bucket(name) is None:
            from moto.core.models import DEFAULT_ACCOUNT_ID
            from moto.s3.models import s3_backends
            from moto.utilities.utils import get_partition

            s3_backends[DEFAULT_ACCOUNT_ID][get_partition(region)].create_bucket(name, region)

    def set_public_read(self, name: str) -> None:
        policy = json.dumps(_public_read_policy(name)).encode("utf-8")
        self._owner(name).put_bucket_policy(name, policy)

    @staticmethod
    def read_chunks(fake: FakeKey) -> Iterator[bytes]:
        """The key's bytes from its spooled buffer, never the whole value at once."""
        position = 0
        while True:
            # moto's own readers seek the shared buffer under this lock.
            with fake.lock:
                try:
                    fake._value_buffer.seek(position)
                    chunk = fake._value_buffer.read(_CHUNK_BYTES)
                except ValueError as error:
                    raise _KeyVanished(fake.name) from error
            if not chunk:
                return
            position += len(chunk)
            yield chunk

    def load(self, record: ObjectRecord, data_path: Path) -> bool:
        """Put a persisted object back; False (and nothing loaded) if its bytes are damaged."""
        backend = self._owner(record.bucket)
        # The stored ETag goes in as is, so a multipart ETag survives the restart.
        fake = backend.put_object(
            record.bucket,
            record.key,
            b"",
            etag=record.etag.strip('"'),
            disable_notification=True,
        )
        try:
            intact = self._fill(fake, data_path) == (record.size, record.sha256)
        except OSError as error:
            _log.error("cannot read %s: %s", data_path, error)
            intact = False
        if not intact:
            backend.delete_object(record.bucket, record.key)
            return False
        fake.set_metadata(dict(record.metadata))
        fake.last_modified = datetime.datetime.fromisoformat(record.last_modified)
        return True

    @staticmethod
    def _fill(fake: FakeKey, data_path: Path) -> tuple[int, str]:
        digest = hashlib.sha256()
        size = 0
        with data_path.open("rb") as source, fake.lock:
            buffer = fake._value_buffer
            buffer.seek(0)
            buffer.truncate()
            while chunk := source.read(_CHUNK_BYTES):
                buffer.write(chunk)
                digest.update(chunk)
                size += len(chunk)
            fake.contentsize = size
        return size, digest.hexdigest()

    @staticmethod
    def _owner(bucket: str) -> S3Backend:
        from moto.s3.models import s3_backends

        partition, account = s3_backends.bucket_accounts[bucket]
        return s3_backends[account][partition]


class Persister:
    """Makes the disk agree with moto about one key, one bucket."""

    def __init__(self, disk: DiskStore, moto: MotoObjects) -> None:
        self._disk = disk
        self._moto = moto

    def sync_key(self, bucket: str, key: str, *, must_exist: bool) -> None:
        for _attempt in range(3):
            fake = self._moto.current_key(bucket, key)
            if fake is None:
                if must_exist:
                    # Acknowledging would promise durability for bytes we cannot find.
                    raise LookupError(f"moto accepted {bucket}/{key!r} but does not hold it")
                self._disk.delete_object(bucket, key)
                return
            try:
                self._write(bucket, key, fake)
                return
            except _KeyVanished:
                continue
        raise RuntimeError(f"{bucket}/{key!r} kept changing while being persisted")

    def set_content_type(self, bucket: str, key: str, content_type: str) -> None:
        """Puts back the content type hidden from moto's form parsing."""
        fake = self._moto.current_key(bucket, key)
        if fake is not None:
            fake.set_metadata({"Content-Type": content_type})

    def sync_bucket_created(self, bucket: str) -> None:
        found = self._moto.bucket(bucket)
        if found is not None:
            self._disk.record_bucket(bucket, found.region_name)

    def sync_bucket_deleted(self, bucket: str) -> None:
        if self._moto.bucket(bucket) is None:
            self._disk.forget_bucket(bucket)

    def _write(self, bucket: str, key: str, fake: FakeKey) -> None:
        self._disk.write_object(
            bucket,
            key,
            self._moto.read_chunks(fake),
            expected_size=fake.size,
            etag=fake.etag,
            metadata={str(name): str(value) for name, value in fake.metadata.items()},
            last_modified=fake.last_modified,
        )


def restore(disk: DiskStore, moto: MotoObjects, *, bucket: str, region: str) -> None:
    """Load everything on disk into moto; the configured bucket always exists afterwards."""
    started = time.monotonic()
    buckets = dict(disk.buckets())
    buckets.setdefault(bucket, region)
    loaded = damaged = total_bytes = 0
    for name, bucket_region in sorted(buckets.items()):
        moto.ensure_bucket(name, bucket_region)
        moto.set_public_read(name)
        disk.record_bucket(name, bucket_region)
        for record in disk.records(name):
            if moto.load(record, disk.data_path(record)):
                loaded += 1
                total_bytes += record.size
            else:
                damaged += 1
                _log.error("%s/%r: data missing or damaged; not restored", name, record.key)
    _log.info(
        "restored %d objects (%d bytes) in %d buckets in %.1fs%s",
        loaded,
        total_bytes,
        len(buckets),
        time.monotonic() - started,
        f", {damaged} damaged" if damaged else "",
    )


# --------------------------------------------------------------------------- HTTP


@dataclass(frozen=True)
class S3Request:
    """What the access rule and persistence need to know about a request."""

    method: str
    bucket: str
    key: str
    query: frozenset[str]
    signed: bool
    virtual_host: bool

    @property
    def resource(self) -> str:
        return f"/{self.bucket}/{self.key}" if self.key else f"/{self.bucket}"


def parse_request(environ: WSGIEnvironment) -> S3Request:
    # moto's own Request and parsing rules, so that both agree on every key.
    from moto.core.request import Request
    from moto.s3.responses import S3Response

    request = Request(environ)
    raw_path = request.raw_path
    query = frozenset(parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True))
    signature_params = {name.lower() for name in query} & {"x-amz-signature", "signature"}
    return S3Request(
        method=request.method.upper(),
        bucket=raw_path.lstrip("/").split("/")[0],
        key="/".join(unquote(raw_path).split("/")[2:]),
        query=query,
        signed=bool(environ.get("HTTP_AUTHORIZATION")) or bool(signature_params),
        virtual_host=S3Response.subdomain_based_buckets(request),
    )


def anonymous_allowed(request: S3Request) -> bool:
    return (
        request.method in ("GET", "HEAD")
        and bool(request.bucket)
        and bool(request.key)
        and request.bucket != "moto-api"
        and not request.query & _SUBRESOURCES
        and not any(name.lower().startswith("response-") for name in request.query)
    )


class WriteKind(Enum):
    OBJECT = "object"
    DELETE_MANY = "delete-many"
    CREATE_BUCKET = "create-bucket"
    DELETE_BUCKET = "delete-bucket"
    POST_OBJECT = "post-object"


def classify_write(request: S3Request) -> WriteKind | None:
    """Which persisted state a request may change; None for everything else."""
    if not request.bucket or request.bucket == "moto-api":
        return None
    if request.key:
        if request.method in ("PUT", "DELETE"):
            touches_bytes = not request.query & _OBJECT_SIDE_RESOURCES
            return WriteKind.OBJECT if touches_bytes else None
        if request.method == "POST" and "uploadId" in request.query:
            return WriteKind.OBJECT
        return None
    if request.method == "POST":
        return WriteKind.DELETE_MANY if "delete" in request.query else WriteKind.POST_OBJECT
    if not request.query & _SUBRESOURCES:
        return {"PUT": WriteKind.CREATE_BUCKET, "DELETE": WriteKind.DELETE_BUCKET}.get(
            request.method
        )
    return None


def keys_to_delete(body: bytes) -> list[str]:
    """The keys of a DeleteObjects body; ValueError if it is not one."""
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError as error:
        raise ValueError(str(error)) from error
    if _local_name(root.tag) != "Delete":
        raise ValueError("not a Delete document")
    keys = []
    for element in root.iter():
        if _local_name(element.tag) == "Key":
            keys.append(element.text or "")
    return keys


def _local_name(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def s3_error(status: str, code: str, message: str, resource: str) -> tuple[str, list[Any], bytes]:
    request_id = uuid.uuid4().hex.upper()
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{escape(message)}</Message>"
        f"<Resource>{escape(resource)}</Resource><RequestId>{request_id}</RequestId></Error>"
    ).encode()
    headers = [
        ("Content-Type", "application/xml"),
        ("Content-Length", str(len(body))),
        ("x-amz-request-id", request_id),
    ]
    return status, headers, body


class _KeyLocks:
    """One lock per (bucket, key) in use, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[tuple[str, str], tuple[threading.Lock, int]] = {}

    @contextlib.contextmanager
    def hold(self, names: Iterable[tuple[str, str]]) -> Iterator[None]:
        # A fixed order, so two multi-key deletes cannot deadlock each other.
        ordered = sorted(set(names))
        locks = [self._check_out(name) for name in ordered]
        acquired: list[threading.Lock] = []
        try:
            for lock in locks:
                lock.acquire()
                acquired.append(lock)
            yield
        finally:
            for lock in reversed(acquired):
                lock.release()
            for name in ordered:
                self._check_in(name)

    def _check_out(self, name: tuple[str, str]) -> threading.Lock:
        with self._guard:
            lock, users = self._locks.get(name, (threading.Lock(), 0))
            self._locks[name] = (lock, users + 1)
            return lock

    def _check_in(self, name: tuple[str, str]) -> None:
        with self._guard:
            lock, users = self._locks[name]
            if users == 1:
                del self._locks[name]
            else:
                self._locks[name] = (lock, users - 1)


class _InFlight:
    """Counts writes being handled, so a shutdown can let them finish."""

    def __init__(self) -> None:
        self._count = 0
        self._idle = threading.Condition()

    @contextlib.contextmanager
    def track(self) -> Iterator[None]:
        with self._idle:
            self._count += 1
        try:
            yield
        finally:
            with self._idle:
                self._count -= 1
                self._idle.notify_all()

    def wait_idle(self, timeout_seconds: float) -> bool:
        with self._idle:
            return self._idle.wait_for(lambda: self._count == 0, timeout_seconds)


def _read_body(environ: WSGIEnvironment) -> bytes:
    stream = environ["wsgi.input"]
    length = environ.get("CONTENT_LENGTH")
    if length:
        body: bytes = stream.read(int(length))
    elif environ.get("wsgi.input_terminated"):
        body = stream.read()
    else:
        # Neither a length nor an end: reading would wait for the client to hang up.
        body = b""
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    return body


def _call_buffered(app: WSGIApplication, environ: WSGIEnvironment) -> tuple[str, list[Any], bytes]:
    """Run the app to completion, so its answer can be held back until the disk agrees."""
    started: list[tuple[str, list[Any]]] = []
    chunks: list[bytes] = []

    def capture(status: str, headers: list[Any], exc_info: Any = None) -> Any:
        started.append((status, headers))
        return chunks.append

    result = app(environ, capture)
    try:
        chunks.extend(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    status, headers = started[-1]
    return status, headers, b"".join(chunks)


FORM_MEDIA_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


def _shield_body_from_form_parsing(environ: WSGIEnvironment, request: S3Request) -> str | None:
    """moto parses a PUT body typed as a form (as `curl --data-binary` sends by
    default) as form fields and stores no bytes at all. It is shown the body as
    octet-stream instead; the caller puts the real content type back afterwards.
    Returns the original content type when it was swapped."""
    content_type = str(environ.get("CONTENT_TYPE", ""))
    media_type = content_type.split(";", 1)[0].strip().lower()
    if request.method != "PUT" or media_type not in FORM_MEDIA_TYPES:
        return None
    environ["CONTENT_TYPE"] = "application/octet-stream"
    return content_type


class DurableS3Middleware:
    """Access rule in front of moto, and the disk kept in step with every write."""

    def __init__(self, app: WSGIApplication, persister: Persister) -> None:
        self._app = app
        self._persister = persister
        self._locks = _KeyLocks()
        self.in_flight = _InFlight()

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        request = parse_request(environ)
        refusal = self._refusal(request)
        if refusal is None:
            kind = classify_write(request)
            if kind is None:
                return self._app(environ, start_response)
            form_type = _shield_body_from_form_parsing(environ, request)
            refusal = self._handle_write(request, kind, environ, form_type)
        status, headers, body = refusal
        start_response(status, headers)
        return [b""] if request.method == "HEAD" else [body]

    @staticmethod
    def _refusal(request: S3Request) -> tuple[str, list[Any], bytes] | None:
        if request.virtual_host:
            message = "Only path-style requests are supported"
            return s3_error("400 Bad Request", "InvalidRequest", message, request.resource)
        if not request.signed and not anonymous_allowed(request):
            message = "Anonymous requests may only read objects"
            return s3_error("403 Forbidden", "AccessDenied", message, request.resource)
        return None

    def _handle_write(
        self,
        request: S3Request,
        kind: WriteKind,
        environ: WSGIEnvironment,
        form_type: str | None = None,
    ) -> tuple[str, list[Any], bytes]:
        if kind is WriteKind.POST_OBJECT:
            message = "POST uploads are not supported by the embedded store"
            return s3_error("501 Not Implemented", "NotImplemented", message, request.resource)
        keys = [request.key]
        if kind is WriteKind.DELETE_MANY:
            try:
                keys = keys_to_delete(_read_body(environ))
            except ValueError:
                message = "The XML you provided was not well-formed"
                return s3_error("400 Bad Request", "MalformedXML", message, request.resource)
        with self.in_flight.track(), self._locks.hold((request.bucket, k) for k in keys):
            status, headers, body = _call_buffered(self._app, environ)
            if not status.startswith("2"):
                return status, headers, body
            try:
                if form_type is not None:
                    self._persister.set_content_type(request.bucket, request.key, form_type)
                self._persist(request, kind, keys)
            except Exception:
                _log.exception("could not persist %s %s", request.method, request.resource)
                message = "The object could not be stored durably; please retry"
                status = "500 Internal Server Error"
                return s3_error(status, "InternalError", message, request.resource)
        return status, headers, body

    def _persist(self, request: S3Request, kind: WriteKind, keys: list[str]) -> None:
        if kind is WriteKind.CREATE_BUCKET:
            self._persister.sync_bucket_created(request.bucket)
        elif kind is WriteKind.DELETE_BUCKET:
            self._persister.sync_bucket_deleted(request.bucket)
        else:
            must_exist = request.method in ("PUT", "POST") and kind is WriteKind.OBJECT
            for key in keys:
                self._persister.sync_key(request.bucket, key, must_exist=must_exist)


# --------------------------------------------------------------------------- child


def build_app(disk: DiskStore) -> DurableS3Middleware:
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

    moto_app = DomainDispatcherApplication(create_backend_app)
    return DurableS3Middleware(moto_app, Persister(disk, MotoObjects()))


def _die_with_parent(parent_pid: int) -> None:
    """Have the kernel send SIGTERM when the parent goes, even by SIGKILL."""
    if not sys.platform.startswith("linux"):
        _log.warning("cannot follow the parent's death on %s", sys.platform)
        return
    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    # The parent may have died before the prctl: then nobody would signal us.
    if os.getppid() != parent_pid:
        raise SystemExit("parent process is gone")


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m service.storage.embedded",
        description="moto's S3 server, with objects kept under --data-dir",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--data-dir", type=Path, default=Path("data/store"))
    parser.add_argument("--bucket", default="verified-urls")
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument("--parent-pid", type=int, help="exit when this process exits")
    return parser.parse_args(argv)


def _announce_ready() -> None:
    sys.stdout.buffer.write(READY_LINE)
    sys.stdout.flush()
    # The parent stops reading stdout now; moto's stray prints go to stderr instead.
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())


def main(argv: Sequence[str] | None = None) -> int:
    options = _parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s embedded-store %(levelname)s %(message)s",
    )
    # One line per request would drown everything else.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    if options.parent_pid is not None:
        _die_with_parent(options.parent_pid)

    from moto.moto_server.werkzeug_app import MotoRequestHandler
    from werkzeug.serving import make_server

    data_dir: Path = options.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    disk = DiskStore(data_dir)
    app = build_app(disk)
    try:
        # Bind before the (possibly long) restore, so a taken port fails at once.
        server = make_server(
            options.host, options.port, app, threaded=True, request_handler=MotoRequestHandler
        )
    except SystemExit:
        _log.error("cannot listen on %s:%d", options.host, options.port)
        return 2
    restore(disk, MotoObjects(), bucket=options.bucket, region=options.region)

    def stop(signum: int, frame: FrameType | None) -> None:
        _log.info("%s received, stopping", signal.Signals(signum).name)
        # shutdown() waits for serve_forever(), which runs in this very thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    _log.info("serving %s on http://%s:%d", data_dir, options.host, options.port)
    _announce_ready()
    try:
        server.serve_forever(poll_interval=0.1)
    finally:
        server.server_close()
        if not app.in_flight.wait_idle(5.0):
            _log.warning("stopped with writes still in flight (none was acknowledged)")
    _log.info("stopped")
    return 0


# --------------------------------------------------------------------------- parent


class _StderrPump:
    """Forwards the child's stderr to ours and keeps its last lines for error messages."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._tail: collections.deque[str] = collections.deque(maxlen=40)
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="embedded-store-stderr", daemon=True)
        self._thread.start()

    def tail(self) -> str:
        with self._lock:
            return "\n".join(self._tail)

    def join(self, timeout_seconds: float) -> None:
        self._thread.join(timeout_seconds)

    def _run(self) -> None:
        for raw in iter(self._stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self._lock:
                self._tail.append(line)
            # A closed or replaced stderr must not kill the pump (and with it the child).
            with contextlib.suppress(AttributeError, OSError, ValueError):
                sys.stderr.write(line + "\n")


class EmbeddedStoreProcess:
    """Runs the embedded store as a child process that cannot outlive this one.

    start() returns once the child serves HTTP on the port (after restoring the
    data dir) and raises RuntimeError, with the child's last stderr lines, if it
    exits first (a taken port, say) or does not get there in time. The child's
    stderr is copied to ours. stop() is SIGTERM, then SIGKILL after the timeout;
    it is safe to call twice, and after the child died on its own.
    """

    def __init__(self, *, host: str, port: int, data_dir: Path, bucket: str, region: str) -> None:
        self._host = host
        self._port = port
        self._data_dir = Path(data_dir)
        self._bucket = bucket
        self._region = region
        self._process: subprocess.Popen[bytes] | None = None
        self._pump: _StderrPump | None = None
        self._release_spawner = threading.Event()

    @property
    def endpoint_url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self, timeout_seconds: float = 30.0) -> None:
        if self._process is not None:
            raise RuntimeError("the embedded store is already started")
        deadline = time.monotonic() + timeout_seconds
        self._data_dir.mkdir(parents=True, exist_ok=True)
        process = self._spawn()
        self._process = process
        assert process.stderr is not None
        self._pump = _StderrPump(process.stderr)
        try:
            self._wait_for_ready_line(process, deadline)
            self._wait_for_http(process, deadline)
        except BaseException:
            self.stop(timeout_seconds=2.0)
            raise

    def stop(self, timeout_seconds: float = 10.0) -> None:
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout_seconds)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._pump is not None:
            self._pump.join(timeout_seconds=2.0)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()
        self._release_spawner.set()
        self._process = None

    def _command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "service.storage.embedded",
            *("--host", self._host, "--port", str(self._port)),
            *("--data-dir", str(self._data_dir.resolve())),
            *("--bucket", self._bucket, "--region", self._region),
            *("--parent-pid", str(os.getpid())),
        ]

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        # The child imports this package even when it is not installed.
        package_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _spawn(self) -> subprocess.Popen[bytes]:
        # PR_SET_PDEATHSIG fires when the *thread* that forked the child ends, so the
        # fork happens in a thread that lives until stop(), not in the caller's thread
        # (which may be a short-lived worker).
        outcome: queue.Queue[subprocess.Popen[bytes] | BaseException] = queue.Queue(1)
        command, env = self._command(), self._environment()
        self._release_spawner = release = threading.Event()

        def spawn_and_stay() -> None:
            try:
                process = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    env=env,
                    # Ctrl-C at a terminal signals the whole process group; the store
                    # must outlive the service's graceful shutdown, and dies with it.
                    start_new_session=True,
                )
            except BaseException as error:
                outcome.put(error)
                return
            outcome.put(process)
            release.wait()

        threading.Thread(target=spawn_and_stay, name="embedded-store-parent", daemon=True).start()
        result = outcome.get()
        if isinstance(result, BaseException):
            raise result
        return result

    def _failure(self, process: subprocess.Popen[bytes], what: str) -> RuntimeError:
        if self._pump is not None and process.poll() is not None:
            self._pump.join(timeout_seconds=2.0)
        tail = self._pump.tail() if self._pump is not None else ""
        return RuntimeError(f"embedded S3 store on {self.endpoint_url} {what}:\n{tail}")

    def _wait_for_ready_line(self, process: subprocess.Popen[bytes], deadline: float) -> None:
        assert process.stdout is not None
        received = b""
        while READY_LINE not in received:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._failure(process, "did not become ready in time")
            readable, _, _ = select.select([process.stdout], [], [], min(remaining, 0.2))
            if readable:
                chunk = os.read(process.stdout.fileno(), 4096)
                if not chunk:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        process.wait(timeout=5.0)
                    raise self._failure(process, f"exited with code {process.returncode}")
                received += chunk

    def _wait_for_http(self, process: subprocess.Popen[bytes], deadline: float) -> None:
        while not _answers_http(self._host, self._port):
            if process.poll() is not None:
                raise self._failure(process, f"exited with code {process.returncode}")
            if time.monotonic() > deadline:
                raise self._failure(process, "does not answer HTTP")
            time.sleep(0.05)


def _answers_http(host: str, port: int) -> bool:
    connection = http.client.HTTPConnection(host, port, timeout=2.0)
    try:
        connection.request("HEAD", "/")
        connection.getresponse().read()
        return True
    except OSError:
        return False
    finally:
        connection.close()


if __name__ == "__main__":
    sys.exit(main())
