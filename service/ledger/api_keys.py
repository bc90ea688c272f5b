"""SQL of the API keys. Functions never commit: their caller owns the transaction."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from service.ledger.models import ApiKeyRow


def add(session: Session, row: ApiKeyRow) -> None:
    session.add(row)
    session.flush()


def tenant_of(session: Session, key_hash: str) -> str | None:
    """The tenant of an active (not revoked) key with this hash."""
    return session.scalar(
        select(ApiKeyRow.tenant).where(
            ApiKeyRow.key_hash == key_hash, ApiKeyRow.revoked_at.is_(None)
        )
    )


def count_all(session: Session) -> int:
    """Every key ever made, revoked ones too."""
    return int(session.scalar(select(func.count()).select_from(ApiKeyRow)) or 0)


def all_keys(session: Session) -> Sequence[ApiKeyRow]:
    return session.scalars(select(ApiKeyRow).order_by(ApiKeyRow.created_at)).all()


def revoke(session: Session, id_or_prefix: str, now: datetime) -> int:
    result = session.execute(
        update(ApiKeyRow)
        .where(
            or_(ApiKeyRow.id == id_or_prefix, ApiKeyRow.key_prefix == id_or_prefix),
            ApiKeyRow.revoked_at.is_(None),
        )
        .values(revoked_at=now)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]
