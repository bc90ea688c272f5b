"""An object's record as clients see it: in API answers and in webhook events."""

from __future__ import annotations

from service.api.schemas import ErrorInfo, ObjectRecord
from service.ledger.models import VERIFIED, ObjectRow
from service.naming import object_url
from service.settings import Settings


def to_record(row: ObjectRow, settings: Settings) -> ObjectRecord:
    verified = row.state == VERIFIED
    error = (
        ErrorInfo(code=row.error_code, message=row.error_message or "") if row.error_code else None
    )
    return ObjectRecord(
        id=row.id,
        name=row.name,
        bucket=row.bucket,
        key=row.key,
        size=row.size,
        sha256=row.sha256,
        content_type=row.content_type,
        state=row.state,
        url=object_url(settings.public_base_url, row.key) if verified else None,
        url_expires_at=None,
        error=error,
        store_attempts=row.store_attempts,
        checks=row.checks,
        rounds=row.rounds,
        created_at=row.created_at,
        updated_at=row.updated_at,
        verified_at=row.verified_at,
        settle_by=row.settle_by,
        callback_url=row.callback_url,
    )
