"""The boto3 S3 store. boto3's own retries are off: the ledger owns every retry."""

from __future__ import annotations

import base64
import hashlib
import io
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, BinaryIO

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from service.storage.base import (
    NotFound,
    ObjectInfo,
    PreconditionFailed,
    PutRequest,
    PutResult,
    Rejected,
    StoreCalls,
    StoreError,
    Unavailable,
)

# Answers that no retry can change. Everything else, 403 included, is retried.
PERMANENT_CODES = frozenset(
    {
        "EntityTooLarge",
        "EntityTooSmall",
        "NoSuchBucket",
        "InvalidBucketName",
        "KeyTooLongError",
        "MetadataTooLarge",
        "InvalidStorageClass",
    }
)
READ_CHUNK_BYTES = 1024 * 1024


def make_s3_client(
    *,
    endpoint_url: str | None,
    region: str,
    max_pool_connections: int,
    connect_timeout_seconds: float,
    read_timeout_seconds: float,
    access_key_id: str | None = None,
    secret_access_key: str | None = None,
) -> Any:
    config = Config(
        region_name=region,
        connect_timeout=connect_timeout_seconds,
        read_timeout=read_timeout_seconds,
        # total_max_attempts counts the first try; plain max_attempts would allow a retry
        retries={"total_max_attempts": 1, "mode": "standard"},
        max_pool_connections=max_pool_connections,
        # Every body goes with a Content-MD5 that the signature covers and the store
        # checks, so hashing it all again for the signature would only cost CPU;
        # boto3 already skips that over https, and now over plain http too.
        s3={"addressing_style": "path", "payload_signing_enabled": False},
        signature_version="s3v4",
        # We send Content-MD5 ourselves; trailing CRC checksums would only be echoed.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key,
        config=config,
    )


def translate(exc: Exception) -> StoreError:
    """Turns a boto3/botocore failure into the service's own error, keeping the code."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = str(error.get("Code") or status or "ClientError")
        detail = str(error.get("Message") or "")
        if status == 404 or code in {"NoSuchKey", "404", "NotFound"}:
            if code == "NoSuchBucket":
                return Rejected(code, detail, status)
            return NotFound(code, detail, status)
        if status == 412 or code == "PreconditionFailed":
            return PreconditionFailed(code, detail, status)
        if code in PERMANENT_CODES:
            return Rejected(code, detail, status)
        return Unavailable(code, detail, status)
    if isinstance(exc, BotoCoreError):
        return Unavailable(type(exc).__name__, str(exc))
    return Unavailable(type(exc).__name__, str(exc))


@contextmanager
def translated() -> Iterator[None]:
    try:
        yield
    except (ClientError, BotoCoreError, OSError) as exc:
        raise translate(exc) from exc


def _md5_b64(md5_hex: str) -> str:
    return base64.b64encode(bytes.fromhex(md5_hex)).decode()


class PartReader:
    """`length` bytes of an open file from `start`, as a seekable stream of its own
    (no `fileno`: a sender must not take the whole file's size for the part's)."""

    def __init__(self, source: BinaryIO, start: int, length: int) -> None:
        self._source = source
        self._start = start
        self._length = length
        self._position = 0

    def read(self, size: int = -1) -> bytes:
        left = self._length - self._position
        if size is None or size < 0 or size > left:
            size = left
        if size == 0:
            return b""
        self._source.seek(self._start + self._position)
        data = self._source.read(size)
        self._position += len(data)
        return data

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._length}[whence]
        self._position = min(max(0, base + offset), self._length)
        return self._position

    def tell(self) -> int:
        return self._position


class S3Store:
    def __init__(self, client: Any, bucket: str, region: str) -> None:
        self._client = client
        self.bucket = bucket
        self._region = region

    def put(self, request: PutRequest, calls: StoreCalls) -> PutResult:
        if request.part_size is None:
            return self._put_single(request, calls)
        return self._put_multipart(request, calls)

    def _put_single(self, request: PutRequest, calls: StoreCalls) -> PutResult:
        extra: dict[str, Any] = {}
        if request.if_none_match:
            extra["IfNoneMatch"] = "*"
        with request.source.open("rb") as body, calls.timed("put"), translated():
            answer = self._client.put_object(
                Bucket=self.bucket,
                Key=request.key,
                Body=body,
                ContentLength=request.size,
                ContentMD5=_md5_b64(request.md5_hex),
                ContentType=request.content_type,
                **extra,
            )
        return PutResult(str(answer.get("ETag", "")).strip('"'), answer.get("VersionId"))

    def _put_multipart(self, request: PutRequest, calls: StoreCalls) -> PutResult:
        assert request.part_size is not None
        with calls.timed("create_multipart"), translated():
            upload_id = self._client.create_multipart_upload(
                Bucket=self.bucket, Key=request.key, ContentType=request.content_type
            )["UploadId"]
        try:
            parts = self._upload_parts(request, upload_id, calls)
            extra: dict[str, Any] = {}
            if request.if_none_match:
                extra["IfNoneMatch"] = "*"
            with calls.timed("complete_multipart"), translated():
                answer = self._client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=request.key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                    **extra,
                )
        except StoreError:
            self._abort(request.key, upload_id, calls)
            raise
        return PutResult(str(answer.get("ETag", "")).strip('"'), answer.get("VersionId"))

    def _upload_parts(
        self, request: PutRequest, upload_id: str, calls: StoreCalls
    ) -> list[dict[str, Any]]:
        assert request.part_size is not None
        parts: list[dict[str, Any]] = []
        with request.source.open("rb") as source:
            for number, md5_hex in enumerate(request.part_md5s, start=1):
                start = (number - 1) * request.part_size
                length = min(request.part_size, request.size - start)
                # Each part is read from the spool as it is sent: never whole in memory.
                with calls.timed("upload_part"), translated():
                    answer = self._client.upload_part(
                        Bucket=self.bucket,
                        Key=request.key,
                        UploadId=upload_id,
                        PartNumber=number,
                        Body=PartReader(source, start, length),
                        ContentLength=length,
                        ContentMD5=_md5_b64(md5_hex),
                    )
                parts.append({"PartNumber": number, "ETag": answer["ETag"]})
        return parts

    def _abort(self, key: str, upload_id: str, calls: StoreCalls) -> None:
        try:
            with calls.timed("abort_multipart"), translated():
                self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except StoreError:
            pass  # a leftover upload costs storage, not correctness

    def head(self, key: str, calls: StoreCalls) -> ObjectInfo:
        with calls.timed("head"), translated():
            answer = self._client.head_object(Bucket=self.bucket, Key=key)
        return ObjectInfo(
            size=int(answer["ContentLength"]),
            etag=str(answer.get("ETag", "")).strip('"'),
            version_id=answer.get("VersionId"),
            server_side_encryption=answer.get("ServerSideEncryption"),
        )

    def read_sha256(self, key: str, calls: StoreCalls) -> tuple[int, str]:
        digest = hashlib.sha256()
        size = 0
        with calls.timed("get"), translated():
            body = self._client.get_object(Bucket=self.bucket, Key=key)["Body"]
            try:
                for chunk in body.iter_chunks(READ_CHUNK_BYTES):
                    digest.update(chunk)
                    size += len(chunk)
            finally:
                body.close()
        return size, digest.hexdigest()

    def delete(self, key: str, calls: StoreCalls) -> None:
        try:
            with calls.timed("delete"), translated():
                self._client.delete_object(Bucket=self.bucket, Key=key)
        except NotFound:
            pass

    def ensure_bucket(self) -> None:
        with translated():
            try:
                self._client.head_bucket(Bucket=self.bucket)
                return
            except ClientError as exc:
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                if status != 404:
                    raise
            extra: dict[str, Any] = {}
            if self._region != "us-east-1":
                extra["CreateBucketConfiguration"] = {"LocationConstraint": self._region}
            try:
                self._client.create_bucket(Bucket=self.bucket, **extra)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in {
                    "BucketAlreadyOwnedByYou",
                    "BucketAlreadyExists",
                }:
                    raise

    def ping(self) -> None:
        with translated():
            self._client.head_bucket(Bucket=self.bucket)

    # ------------------------------------------------ maintenance (reconcile)

    def list_keys(self) -> Iterator[str]:
        """Every key in the bucket, page by page."""
        paginator = self._client.get_paginator("list_objects_v2")
        with translated():
            for page in paginator.paginate(Bucket=self.bucket):
                for item in page.get("Contents", []):
                    yield str(item["Key"])

    def abort_stale_uploads(self, older_than: datetime) -> list[str]:
        """Aborts multipart uploads started before `older_than` (left by a crash);
        returns their keys."""
        aborted = []
        paginator = self._client.get_paginator("list_multipart_uploads")
        with translated():
            for page in paginator.paginate(Bucket=self.bucket):
                for upload in page.get("Uploads", []):
                    if upload["Initiated"] < older_than:
                        self._client.abort_multipart_upload(
                            Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                        )
                        aborted.append(str(upload["Key"]))
        return aborted
