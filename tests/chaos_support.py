"""Helpers for tests that put the fault-injecting proxy between a client and moto."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError, HTTPClientError, ReadTimeoutError

from service.chaos import ChaosProxy
from service.storage.s3 import make_s3_client


def no_retry_client(endpoint: str, read_timeout_seconds: float = 30.0) -> Any:
    """The service's own boto3 client (`make_s3_client`), which never retries.

    A test that counts faults from the client's side must see every answer.
    """
    return make_s3_client(
        endpoint_url=endpoint,
        region="us-east-1",
        max_pool_connections=8,
        connect_timeout_seconds=5,
        read_timeout_seconds=read_timeout_seconds,
        access_key_id="testing",
        secret_access_key="testing",
    )


def status_of(exc: ClientError) -> int:
    status: int = exc.response["ResponseMetadata"]["HTTPStatusCode"]
    return status


def outcome_of(call: Callable[[], Any]) -> str:
    """How a request ended, seen from the client: "ok", an HTTP status, "timeout" or "reset"."""
    try:
        call()
    except ClientError as exc:
        return str(status_of(exc))
    except ReadTimeoutError:
        return "timeout"
    except HTTPClientError:
        return "reset"
    return "ok"


def stored_bytes(direct: Any, bucket: str, key: str) -> bytes | None:
    """What moto really holds under `key` (asked directly, not through the proxy)."""
    try:
        body: bytes = direct.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        if status_of(exc) == 404:
            return None
        raise
    return body


def read_log(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@contextmanager
def running_proxy(upstream: str, **kwargs: Any) -> Iterator[ChaosProxy]:
    proxy = ChaosProxy(upstream, **kwargs)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()
