"""Every SQL statement of the ledger. Functions never commit: their caller owns
the transaction."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, Select, and_, func, insert, literal, or_, select, update
from sqlalchemy.orm import Session

from service.ledger.models import (
    DONE,
    PENDING,
    PURGING,
    VERIFIED,
    DeliveryRow,
    EventRow,
    ObjectRow,
)
from service.storage.base import StoreCall

# columns the verifier may change; everything else is fixed at upload
WORK_COLUMNS = (
    "state",
    "phase",
    "rounds",
    "store_attempts",
    "round_store_attempts",
    "checks",
    "round_checks",
    "check_errors",
    "stored_at",
    "overwrite",
    "next_action_at",
    "last_error_code",
    "last_error_detail",
    "error_code",
    "error_message",
    "etag",
    "version_id",
    "updated_at",
    "verified_at",
)


def lock_object(session: Session, tenant: str, object_id: str) -> ObjectRow | None:
    """The row, locked until the transaction ends (PostgreSQL; SQLite locks the file)."""
    return session.scalars(
        select(ObjectRow)
        .where(ObjectRow.id == object_id, ObjectRow.tenant == tenant)
        .with_for_update()
    ).one_or_none()


def new_object_id() -> str:
    return uuid.uuid4().hex


def insert_object(session: Session, row: ObjectRow) -> None:
    session.add(row)
    session.flush()


def get_object(session: Session, tenant: str, object_id: str) -> ObjectRow | None:
    return session.scalars(
        select(ObjectRow).where(ObjectRow.id == object_id, ObjectRow.tenant == tenant)
    ).one_or_none()


def object_by_idempotency_key(session: Session, tenant: str, key: str) -> ObjectRow | None:
    return session.scalars(
        select(ObjectRow).where(ObjectRow.tenant == tenant, ObjectRow.idempotency_key == key)
    ).one_or_none()


def _live_name(tenant: str, name: str) -> Select[str]:
    return select(ObjectRow.id).where(
        ObjectRow.tenant == tenant,
        ObjectRow.name == name,
        or_(ObjectRow.state.in_((PENDING, VERIFIED)), ObjectRow.phase == PURGING),
    )


def _pending_bytes() -> Select[int]:
    return select(func.coalesce(func.sum(ObjectRow.size), 0)).where(ObjectRow.state == PENDING)


def live_name_exists(session: Session, tenant: str, name: str) -> bool:
    return session.scalar(_live_name(tenant, name).limit(1)) is not None


def pending_bytes(session: Session) -> int:
    """What the spool holds: every pending object keeps its copy there."""
    return int(session.scalar(_pending_bytes()) or 0)


def live_name_and_pending_bytes(session: Session, tenant: str, name: str) -> tuple[bool, int]:
    """`live_name_exists` and `pending_bytes` in one round trip (every upload asks both)."""
    row = session.execute(
        select(
            _live_name(tenant, name).limit(1).exists(),
            _pending_bytes().scalar_subquery(),
        )
    ).one()
    return bool(row[0]), int(row[1] or 0)


def pending_spool_paths(session: Session) -> set[str]:
    return set(session.scalars(select(ObjectRow.spool_path).where(ObjectRow.state == PENDING)))


def live_keys_among(session: Session, bucket: str, keys: Sequence[str]) -> set[str]:
    """Which of `keys` a pending or verified row accounts for."""
    return set(
        session.scalars(
            select(ObjectRow.key).where(
                ObjectRow.bucket == bucket,
                ObjectRow.key.in_(keys),
                ObjectRow.state.in_(("pending", "verified")),
            )
        )
    )


def list_objects(
    session: Session,
    tenant: str,
    state: str | None,
    limit: int,
    after: tuple[datetime, str] | None,
) -> Sequence[ObjectRow]:
    """Newest first; `after` is the (created_at, id) of the last row already seen."""
    query = select(ObjectRow).where(ObjectRow.tenant == tenant)
    if state is not None:
        query = query.where(ObjectRow.state == state)
    if after is not None:
        created_at, object_id = after
        query = query.where(
            or_(
                ObjectRow.created_at < created_at,
                and_(ObjectRow.created_at == created_at, ObjectRow.id < object_id),
            )
        )
    query = query.order_by(ObjectRow.created_at.desc(), ObjectRow.id.desc()).limit(limit)
    return session.scalars(query).all()


def _has_work() -> ColumnElement[bool]:
    """`phase <> 'done'` with the literal in the SQL: a bound parameter would keep
    PostgreSQL's generic plans from using the partial index `ix_objects_due`."""
    return ObjectRow.phase != literal(DONE, literal_execute=True)


def claim_due(
    session: Session, owner: str, now: datetime, lease_seconds: float, limit: int
) -> list[ObjectRow]:
    """Leases up to `limit` due pending rows. On PostgreSQL, SKIP LOCKED lets any
    number of workers claim at once without taking the same row twice."""
    rows = list(
        session.scalars(
            select(ObjectRow)
            .where(
                _has_work(),
                ObjectRow.next_action_at <= now,
                or_(ObjectRow.lease_expires_at.is_(None), ObjectRow.lease_expires_at < now),
            )
            .order_by(ObjectRow.next_action_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    )
    grant_leases(session, rows, owner, now, lease_seconds)
    return rows


def grant_leases(
    session: Session,
    rows: Sequence[ObjectRow | DeliveryRow],
    owner: str,
    now: datetime,
    lease_seconds: float,
) -> None:
    """Leases claimed rows (objects or deliveries): a new token each claim, so
    that a holder whose lease was taken over can no longer write."""
    expires = now + timedelta(seconds=lease_seconds)
    for row in rows:
        row.lease_owner = owner
        row.lease_token = uuid.uuid4().hex
        row.lease_expires_at = expires
    session.flush()


def next_due_at(session: Session) -> datetime | None:
    return session.scalar(select(func.min(ObjectRow.next_action_at)).where(_has_work()))


def save_step(
    session: Session,
    row: ObjectRow,
    token: str,
    *,
    keep_lease_until: datetime | None,
) -> bool:
    """Writes the row's work columns if the caller still holds its lease.

    Returns False when the lease was lost (taken over after expiry): then
    nothing is written, and the caller must drop the row.
    """
    values = {name: getattr(row, name) for name in WORK_COLUMNS}
    if keep_lease_until is None:
        values.update(lease_owner=None, lease_token=None, lease_expires_at=None)
    else:
        values["lease_expires_at"] = keep_lease_until
    result = session.execute(
        update(ObjectRow)
        .where(ObjectRow.id == row.id, ObjectRow.lease_token == token)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def renew_leases(session: Session, tokens: Sequence[str], until: datetime) -> int:
    if not tokens:
        return 0
    result = session.execute(
        update(ObjectRow)
        .where(ObjectRow.lease_token.in_(tokens))
        .values(lease_expires_at=until)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def add_events(
    session: Session,
    object_id: str,
    round_number: int,
    calls: Sequence[StoreCall],
    at: datetime,
    worker: str,
    outcome_override: str | None = None,
) -> None:
    if not calls:
        return
    # one INSERT (executemany) without the unit of work: events are never read back here
    session.execute(
        insert(EventRow),
        [
            {
                "object_id": object_id,
                "at": at,
                "round": round_number,
                "action": call.action,
                "outcome": outcome_override or call.outcome,
                "error_code": call.error_code,
                "detail": call.detail,
                "http_status": call.http_status,
                "latency_ms": round(call.latency_seconds * 1000, 3),
                "worker": worker,
            }
            for call in calls
        ],
    )


def events_for(session: Session, object_id: str) -> Sequence[EventRow]:
    return session.scalars(
        select(EventRow).where(EventRow.object_id == object_id).order_by(EventRow.id)
    ).all()
