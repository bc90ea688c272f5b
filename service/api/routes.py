"""Thin routes: parse, call one function of `service.objects`, shape the response."""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from service import objects
from service.api.bodies import upload_body
from service.api.deps import CallerDep, ContextDep, ReaderDep
from service.api.schemas import (
    Delivery,
    DeliveryAttempt,
    DeliveryList,
    Health,
    ObjectPage,
    ObjectRecord,
    ObjectState,
    Problem,
    Readiness,
    WebhookEvent,
)
from service.errors import ServiceError
from service.ledger.models import PENDING, VERIFIED, ObjectRow
from service.naming import MAX_NAME_BYTES, NAME_PATTERN
from service.records import to_record
from service.settings import Settings
from service.webhooks import outbox
from service.webhooks.targets import CALLBACK_URL_PATTERN, MAX_URL_LENGTH

router = APIRouter()
callbacks = APIRouter()

PROBLEM: dict[str, Any] = {"model": Problem}
RETRY_AFTER = {
    "Retry-After": {
        "description": "seconds until asking again makes sense",
        "schema": {"type": "integer"},
    }
}
UNAUTHORIZED = {
    **PROBLEM,
    "description": "unauthorized: a missing, unknown or revoked API key",
    "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
}
RATE_LIMITED = {
    **PROBLEM,
    "description": "rate_limited: too many status reads for the tenant; use `wait`",
    "headers": RETRY_AFTER,
}
ETAG = {
    "ETag": {
        "description": "changes whenever the record does",
        "required": True,
        "schema": {"type": "string"},
    }
}
REPLAYED = {
    "Idempotent-Replayed": {
        "description": "`true` when an earlier upload with this Idempotency-Key made the object",
        "schema": {"type": "string", "enum": ["true"]},
    }
}
LOCATION = {
    "Location": {
        "description": "where the record lives",
        "required": True,
        "schema": {"type": "string"},
    }
}
OBJECTS_TAG = "objects"
SERVICE_TAG = "service"
WEBHOOKS_TAG = "webhooks"

WaitQuery = Annotated[
    float,
    Query(
        ge=0,
        le=3600,
        description="seconds to wait for the object to leave `pending` (long-poll); "
        "bounded by the MAX_WAIT_SECONDS setting",
    ),
]

UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "description": "The object's bytes as the raw body (its Content-Type is kept, "
        "unless the `content_type` parameter says otherwise), or a multipart/form-data "
        "body with a `file` field.",
        "content": {
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {"schema": {"$ref": "#/components/schemas/UploadForm"}},
        },
    }
}


def _record_response(
    row: ObjectRow,
    settings: Settings,
    status: int,
    if_none_match: str | None = None,
    **headers: str,
) -> Response:
    """The record, with an ETag that changes whenever the record does; 304 when
    the client already has this version."""
    if row.state == PENDING:
        headers["Retry-After"] = str(objects.retry_after_seconds(row))
    body = to_record(row, settings).model_dump(mode="json")
    encoded = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
    headers["ETag"] = f'"{hashlib.sha256(encoded).hexdigest()[:32]}"'
    if if_none_match is not None and _etag_matches(if_none_match, headers["ETag"]):
        return Response(status_code=304, headers=headers)
    return JSONResponse(body, status_code=status, headers=headers)


def _etag_matches(if_none_match: str, etag: str) -> bool:
    candidates = {item.strip().removeprefix("W/") for item in if_none_match.split(",")}
    return "*" in candidates or etag in candidates


@callbacks.post(
    "{$request.query.callback_url}",
    operation_id="object_settled",
    tags=[WEBHOOKS_TAG],
    summary="The object settled (sent to callback_url)",
    description="Signed the Standard Webhooks way: `webhook-signature` is one or more "
    "space-separated `v1,<base64 HMAC-SHA256>` over `{webhook-id}.{webhook-timestamp}.{body}` "
    "with the tenant's secret (two during a rotation). Any 2xx acknowledges it; anything "
    "else, or no answer within the timeout, is retried with growing waits for a day, "
    "always with the same `webhook-id`.",
    status_code=204,
    response_class=Response,
)
def object_settled(
    body: WebhookEvent,
    webhook_id: Annotated[str, Header(description="the same on every retry and replay")],
    webhook_timestamp: Annotated[str, Header(description="seconds since the epoch")],
    webhook_signature: Annotated[str, Header(description="`v1,<base64>` (space-separated)")],
) -> None:
    """Documentation only: the receiver implements it."""


@router.post(
    "/v1/objects",
    operation_id="upload_object",
    tags=[OBJECTS_TAG],
    summary="Upload an object",
    description="Spools the body, records the object `pending` and starts storing it. "
    "Answers 202 while pending; with `wait`, 201 once verified within the wait.",
    status_code=202,
    response_model=ObjectRecord,
    responses={
        201: {
            "model": ObjectRecord,
            "description": "Verified within `wait`",
            "headers": {**LOCATION, **ETAG, **REPLAYED},
        },
        202: {
            "model": ObjectRecord,
            "description": "Accepted, pending (or failed)",
            "headers": {**LOCATION, **RETRY_AFTER, **ETAG, **REPLAYED},
        },
        400: {
            **PROBLEM,
            "description": "invalid_name, digest_mismatch, invalid_callback_url or invalid_request",
        },
        401: UNAUTHORIZED,
        409: {**PROBLEM, "description": "name_taken"},
        413: {**PROBLEM, "description": "too_large"},
        422: {
            **PROBLEM,
            "description": "idempotency_key_reused (the key came with another upload), "
            "or invalid_request",
        },
        503: {**PROBLEM, "description": "overloaded", "headers": RETRY_AFTER},
    },
    openapi_extra=UPLOAD_BODY,
    callbacks=callbacks.routes,
)
async def upload_object(
    request: Request,
    ctx: ContextDep,
    caller: CallerDep,
    name: Annotated[
        str,
        Query(
            description="the object's name within the tenant: at most 1024 bytes in UTF-8 "
            "less the tenant's key prefix (`acme/` for tenant acme), no control characters, "
            "no leading or trailing `/`, no `//`, no `.` or `..` segment",
            examples=["reports/2026/summary.pdf"],
            # documented only: the name policy itself answers 400 invalid_name
            json_schema_extra={
                "minLength": 1,
                "maxLength": MAX_NAME_BYTES,
                "pattern": NAME_PATTERN,
            },
        ),
    ],
    wait: WaitQuery = 0,
    content_type: Annotated[
        str | None,
        Query(
            description="the object's media type, kept and served with it; when given, "
            "it is used instead of the request's Content-Type (a generated client sends "
            "a raw body as application/octet-stream)",
            examples=["application/pdf"],
            json_schema_extra={
                "maxLength": objects.MAX_CONTENT_TYPE_LENGTH,
                "pattern": objects.CONTENT_TYPE_PATTERN,
            },
        ),
    ] = None,
    content_length: Annotated[int | None, Header(include_in_schema=False)] = None,
    content_md5: Annotated[str | None, Header(description="base64 MD5 of the body")] = None,
    content_digest: Annotated[
        str | None, Header(description="RFC 9530, e.g. `sha-256=:base64:`")
    ] = None,
    idempotency_key: Annotated[
        str | None,
        Header(
            description="any unique string (a UUID): a retry with the same key, name and "
            "body answers with the object the first upload made, and makes nothing new",
            json_schema_extra={
                "minLength": 1,
                "maxLength": 255,
                "pattern": objects.IDEMPOTENCY_KEY_PATTERN,
            },
        ),
    ] = None,
    callback_url: Annotated[
        str | None,
        Query(
            description="http(s) URL to POST the signed `object.verified` or "
            "`object.failed` event to when the object settles; unset: the tenant's "
            "default, if any. No credentials, no fragment, and no private, loopback or "
            "link-local address (400 `invalid_callback_url`)",
            json_schema_extra={
                "format": "uri",
                "maxLength": MAX_URL_LENGTH,
                "pattern": CALLBACK_URL_PATTERN,
            },
        ),
    ] = None,
) -> Response:
    accepted = await objects.accept_upload(
        ctx,
        caller.tenant,
        caller.key_prefix,
        name,
        upload_body(request, content_type),
        content_length,
        objects.ClientDigests(content_md5, content_digest),
        idempotency_key,
        callback_url,
    )
    row = accepted.row
    if wait > 0:
        row = await objects.wait_settled(ctx, caller.tenant, row, wait)
    status = 201 if row.state == VERIFIED else 202
    headers = {"Location": f"/v1/objects/{row.id}"}
    if accepted.replayed:
        headers["Idempotent-Replayed"] = "true"
    return _record_response(row, ctx.settings, status, **headers)


@router.get(
    "/v1/objects/{object_id}",
    operation_id="get_object",
    tags=[OBJECTS_TAG],
    summary="Read an object's record",
    description="The record; `url` only once verified. While pending, `Retry-After` says "
    "when to ask again; `wait` long-polls until the object leaves `pending`.",
    response_model=ObjectRecord,
    responses={
        200: {"description": "The record", "headers": {**RETRY_AFTER, **ETAG}},
        304: {"description": "Unchanged since the ETag in If-None-Match", "headers": ETAG},
        401: UNAUTHORIZED,
        404: {**PROBLEM, "description": "not_found (also another tenant's object)"},
        422: {**PROBLEM, "description": "invalid_request"},
        429: RATE_LIMITED,
    },
)
async def get_object(
    ctx: ContextDep,
    caller: ReaderDep,
    object_id: str,
    wait: WaitQuery = 0,
    if_none_match: Annotated[
        str | None, Header(description="an ETag from an earlier read: 304 if unchanged")
    ] = None,
) -> Response:
    row = await objects.get_object(ctx, caller.tenant, object_id)
    if wait > 0:
        row = await objects.wait_settled(ctx, caller.tenant, row, wait)
    return _record_response(row, ctx.settings, 200, if_none_match)


@router.delete(
    "/v1/objects/{object_id}",
    operation_id="delete_object",
    tags=[OBJECTS_TAG],
    summary="Delete an object",
    description="The record's state becomes `deleted` at once and its URL is never "
    "handed out again; a pending object stops being worked on; the bytes are deleted "
    "from the store (with retries, and a check that they are gone), after which the "
    "name is free again. Deleting twice answers the same.",
    response_model=ObjectRecord,
    responses={
        401: UNAUTHORIZED,
        404: {**PROBLEM, "description": "not_found (also another tenant's object)"},
    },
)
async def delete_object(ctx: ContextDep, caller: CallerDep, object_id: str) -> Response:
    row = await objects.delete_object(ctx, caller.tenant, object_id)
    return _record_response(row, ctx.settings, 200)


@router.get(
    "/v1/objects",
    operation_id="list_objects",
    tags=[OBJECTS_TAG],
    summary="List objects, newest first",
    response_model=ObjectPage,
    responses={
        400: {**PROBLEM, "description": "invalid_request (a bad cursor)"},
        401: UNAUTHORIZED,
        422: {**PROBLEM, "description": "invalid_request"},
        429: RATE_LIMITED,
    },
)
async def list_objects(
    ctx: ContextDep,
    caller: ReaderDep,
    state: Annotated[ObjectState | None, Query(description="only objects in this state")] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="at most this many records")] = 50,
    cursor: Annotated[str | None, Query(description="the `next_cursor` of the page before")] = None,
) -> ObjectPage:
    rows, next_cursor = await objects.list_objects(ctx, caller.tenant, state, limit, cursor)
    return ObjectPage(items=[to_record(row, ctx.settings) for row in rows], next_cursor=next_cursor)


def to_delivery(view: outbox.DeliveryView) -> Delivery:
    row = view.delivery
    return Delivery(
        number=row.number,
        webhook_id=row.webhook_id,
        event_type=row.event_type,
        url=row.url,
        state=row.state,
        attempts=[
            DeliveryAttempt(
                at=attempt.at,
                http_status=attempt.http_status,
                latency_ms=attempt.latency_ms,
                error=attempt.error,
            )
            for attempt in view.attempts
        ],
        created_at=row.created_at,
        next_attempt_at=row.next_attempt_at if row.state == "pending" else None,
        delivered_at=row.delivered_at,
    )


@router.get(
    "/v1/objects/{object_id}/deliveries",
    operation_id="list_deliveries",
    tags=[WEBHOOKS_TAG],
    summary="List an object's webhook deliveries",
    description="Every event sent (or being sent) for the object, with each attempt's "
    "status, latency and error.",
    response_model=DeliveryList,
    responses={
        401: UNAUTHORIZED,
        404: {**PROBLEM, "description": "not_found (also another tenant's object)"},
        429: RATE_LIMITED,
    },
)
async def list_deliveries(ctx: ContextDep, caller: ReaderDep, object_id: str) -> DeliveryList:
    views = await run_in_threadpool(outbox.deliveries_of, ctx.sessions, caller.tenant, object_id)
    return DeliveryList(items=[to_delivery(view) for view in views])


@router.post(
    "/v1/objects/{object_id}/deliveries/{number}/replay",
    operation_id="replay_delivery",
    tags=[WEBHOOKS_TAG],
    summary="Send a webhook delivery again",
    description="Queues delivery `number` again as a new delivery, with the same "
    "`webhook-id` and body, signed anew; retried like any other.",
    status_code=202,
    response_model=Delivery,
    responses={
        401: UNAUTHORIZED,
        404: {**PROBLEM, "description": "not_found: no such object or delivery"},
        409: {**PROBLEM, "description": "object_deleted: a deleted object's events are not sent"},
        422: {**PROBLEM, "description": "invalid_request"},
        429: RATE_LIMITED,
    },
)
async def replay_delivery(
    ctx: ContextDep,
    caller: ReaderDep,  # charged like a read, so replays cannot be a flood
    object_id: str,
    number: Annotated[int, Path(ge=1, le=1_000_000)],
) -> Delivery:
    view = await run_in_threadpool(
        outbox.replay, ctx.sessions, outbox.Outbox(ctx.settings), caller.tenant, object_id, number
    )
    ctx.wake_dispatcher()
    return to_delivery(view)


@router.get(
    "/healthz",
    operation_id="health",
    tags=[SERVICE_TAG],
    summary="The process is up",
    response_model=Health,
)
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    operation_id="readiness",
    tags=[SERVICE_TAG],
    summary="The ledger and the store answer",
    response_model=Readiness,
    responses={503: {**PROBLEM, "description": "not_ready"}},
)
async def readyz(request: Request) -> Readiness:
    checks: Any = request.app.state.readiness
    try:
        await run_in_threadpool(checks)
    except Exception as exc:
        raise ServiceError(503, "not_ready", str(exc) or type(exc).__name__) from exc
    return Readiness(status="ok", ledger="ok", store="ok")
