"""Response bodies, as the OpenAPI document shows them."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ObjectState(StrEnum):
    """Where an object stands: `pending` until it is verified or has failed;
    `deleted` once a client deleted it."""

    PENDING = "pending"
    VERIFIED = "verified"
    FAILED = "failed"
    DELETED = "deleted"


class ErrorInfo(BaseModel):
    code: str = Field(
        description="store_unavailable, never_visible, content_mismatch, store_rejected "
        "or spool_missing",
        examples=["never_visible"],
    )
    message: str


class ObjectRecord(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "3f0c2a9b8d6e4f1a9c7b5d3e1f0a2b4c",
                    "name": "reports/2026/summary.pdf",
                    "bucket": "verified-urls",
                    "key": "reports/2026/summary.pdf",
                    "size": 48213,
                    "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
                    "content_type": "application/pdf",
                    "state": "verified",
                    "url": "http://127.0.0.1:9000/verified-urls/reports/2026/summary.pdf",
                    "url_expires_at": None,
                    "error": None,
                    "store_attempts": 1,
                    "checks": 1,
                    "rounds": 1,
                    "created_at": "2026-12-03T12:00:00Z",
                    "updated_at": "2026-12-03T12:00:00.120000Z",
                    "verified_at": "2026-12-03T12:00:00.120000Z",
                    "settle_by": "2026-12-03T14:31:00Z",
                    "callback_url": "https://hooks.example.com/verified-urls",
                }
            ]
        }
    )

    id: str
    name: str
    bucket: str
    key: str
    size: int
    sha256: str
    content_type: str
    state: ObjectState
    url: str | None = Field(description="present only when state is verified")
    url_expires_at: datetime | None = Field(
        description="when a presigned URL stops working; null for public URLs"
    )
    error: ErrorInfo | None = Field(description="why the object failed; null otherwise")
    store_attempts: int = Field(description="PUTs made, over all rounds")
    checks: int = Field(description="presence checks made, over all rounds")
    rounds: int = Field(description="the current round: 1 is the first store, more are re-runs")
    created_at: datetime
    updated_at: datetime
    verified_at: datetime | None
    settle_by: datetime = Field(description="the latest time the object will have left pending")
    callback_url: str | None = Field(
        None,
        description="where the `object.verified` or `object.failed` event is sent; "
        "null: the tenant's default callback URL, if it has one",
    )


class ObjectPage(BaseModel):
    items: list[ObjectRecord]
    next_cursor: str | None = Field(
        description="pass as `cursor` for the next page; null at the end"
    )


class Problem(BaseModel):
    """RFC 9457 problem details, with a stable machine `code`."""

    type: str
    title: str
    status: int
    code: str = Field(examples=["invalid_name"])
    detail: str
    instance: str | None = None


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ok"]
    ledger: Literal["ok"]
    store: Literal["ok"]


class DeliveryAttempt(BaseModel):
    at: datetime
    http_status: int | None = Field(description="the receiver's answer; null if none came")
    latency_ms: float
    error: str | None = Field(description="why the attempt did not deliver; null if it did")


class Delivery(BaseModel):
    """One webhook event for one callback URL, and every attempt to deliver it."""

    number: int = Field(description="1, 2, ... per object; replays get the next number")
    webhook_id: str = Field(description="the `webhook-id` header: the same on every retry")
    event_type: Literal["object.verified", "object.failed"]
    url: str
    state: Literal["pending", "delivered", "failed"] = Field(
        description="`failed` once retried for WEBHOOK_RETRY_FOR_SECONDS without a 2xx"
    )
    attempts: list[DeliveryAttempt]
    created_at: datetime
    next_attempt_at: datetime | None = Field(description="while pending")
    delivered_at: datetime | None


class DeliveryList(BaseModel):
    items: list[Delivery]


class WebhookEvent(BaseModel):
    """The body POSTed to a callback URL (Standard Webhooks payload shape)."""

    type: Literal["object.verified", "object.failed"]
    timestamp: datetime = Field(description="when the object settled")
    data: ObjectRecord


class UploadForm(BaseModel):
    """A browser form's upload: the object is the `file` field (its part's
    Content-Type is kept)."""

    model_config = ConfigDict(title="UploadForm")

    file: bytes = Field(json_schema_extra={"format": "binary"})
