"""Every SQL statement of the webhook outbox and the tenants' webhook settings.
Functions never commit: their caller owns the transaction."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, literal, or_, select, update
from sqlalchemy.orm import Session

from service.ledger import repository
from service.ledger.models import (
    DELIVERY_FAILED,
    DELIVERY_PENDING,
    DeliveryAttemptRow,
    DeliveryRow,
    ObjectRow,
    WebhookSettingsRow,
)


def settings_of(session: Session, tenant: str) -> WebhookSettingsRow | None:
    return session.get(WebhookSettingsRow, tenant)


def lock_settings(session: Session, tenant: str) -> WebhookSettingsRow | None:
    return session.scalars(
        select(WebhookSettingsRow).where(WebhookSettingsRow.tenant == tenant).with_for_update()
    ).one_or_none()


def add_settings(session: Session, row: WebhookSettingsRow) -> None:
    session.add(row)
    session.flush()


def enqueue(
    session: Session,
    obj: ObjectRow,
    event_type: str,
    url: str,
    payload: str,
    now: datetime,
    give_up_at: datetime,
    webhook_id: str | None = None,
) -> DeliveryRow:
    """A new delivery of `obj`'s event, due at once. The object's row is locked
    (or being written) by the caller, so numbers per object do not collide."""
    number = (
        session.scalar(
            select(func.coalesce(func.max(DeliveryRow.number), 0)).where(
                DeliveryRow.object_id == obj.id
            )
        )
        or 0
    ) + 1
    row = DeliveryRow(
        object_id=obj.id,
        tenant=obj.tenant,
        number=number,
        webhook_id=webhook_id or f"msg_{uuid.uuid4().hex}",
        event_type=event_type,
        url=url,
        payload=payload,
        state=DELIVERY_PENDING,
        attempts=0,
        next_attempt_at=now,
        give_up_at=give_up_at,
        created_at=now,
    )
    session.add(row)
    session.flush()
    return row


def deliveries_of(session: Session, object_id: str) -> Sequence[DeliveryRow]:
    return session.scalars(
        select(DeliveryRow).where(DeliveryRow.object_id == object_id).order_by(DeliveryRow.number)
    ).all()


def delivery(session: Session, object_id: str, number: int) -> DeliveryRow | None:
    return session.scalars(
        select(DeliveryRow).where(DeliveryRow.object_id == object_id, DeliveryRow.number == number)
    ).one_or_none()


def attempts_of(session: Session, delivery_ids: Sequence[int]) -> Sequence[DeliveryAttemptRow]:
    if not delivery_ids:
        return []
    return session.scalars(
        select(DeliveryAttemptRow)
        .where(DeliveryAttemptRow.delivery_id.in_(delivery_ids))
        .order_by(DeliveryAttemptRow.id)
    ).all()


def claim_due(
    session: Session, owner: str, now: datetime, lease_seconds: float, limit: int
) -> list[DeliveryRow]:
    """Leases up to `limit` due deliveries; SKIP LOCKED as for objects."""
    rows = list(
        session.scalars(
            select(DeliveryRow)
            .where(
                DeliveryRow.state == literal(DELIVERY_PENDING, literal_execute=True),
                DeliveryRow.next_attempt_at <= now,
                or_(DeliveryRow.lease_expires_at.is_(None), DeliveryRow.lease_expires_at < now),
            )
            .order_by(DeliveryRow.next_attempt_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    )
    repository.grant_leases(session, rows, owner, now, lease_seconds)
    return rows


def next_due_at(session: Session) -> datetime | None:
    return session.scalar(
        select(func.min(DeliveryRow.next_attempt_at)).where(
            DeliveryRow.state == literal(DELIVERY_PENDING, literal_execute=True)
        )
    )


def record_attempt(
    session: Session, row: DeliveryRow, token: str, attempt: DeliveryAttemptRow
) -> bool:
    """Writes the attempt and the delivery's new state, and releases the lease,
    if the caller still holds it; False (nothing written) when it was lost."""
    result = session.execute(
        update(DeliveryRow)
        .where(DeliveryRow.id == row.id, DeliveryRow.lease_token == token)
        .values(
            state=row.state,
            attempts=row.attempts,
            next_attempt_at=row.next_attempt_at,
            last_status=row.last_status,
            last_error=row.last_error,
            delivered_at=row.delivered_at,
            lease_owner=None,
            lease_token=None,
            lease_expires_at=None,
        )
        .execution_options(synchronize_session=False)
    )
    if not result.rowcount:  # type: ignore[attr-defined]
        return False
    session.add(attempt)
    return True


def cancel_pending(session: Session, object_id: str, reason: str) -> int:
    """Ends an object's pending deliveries; an attempt in flight can no longer
    record anything (its lease token is gone)."""
    result = session.execute(
        update(DeliveryRow)
        .where(DeliveryRow.object_id == object_id, DeliveryRow.state == DELIVERY_PENDING)
        .values(
            state=DELIVERY_FAILED,
            last_error=reason,
            lease_owner=None,
            lease_token=None,
            lease_expires_at=None,
        )
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]
