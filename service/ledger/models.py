"""The ledger's tables. Alembic owns the schema; a test keeps the two equal."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

PENDING, VERIFIED, FAILED, DELETED = "pending", "verified", "failed", "deleted"
STATES = (PENDING, VERIFIED, FAILED, DELETED)
# What remains to do: a pending object is storing or verifying; a deleted one
# is purging until the store no longer has it; then nothing is (done).
STORING, VERIFYING, PURGING, DONE = "storing", "verifying", "purging", "done"
PHASES = (STORING, VERIFYING, PURGING, DONE)


LIVE_NAME_PREDICATE = "state IN ('pending', 'verified') OR phase = 'purging'"


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on every database (SQLite keeps naive UTC underneath)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the ledger")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# SQLite only auto-increments an INTEGER PRIMARY KEY.
BigIntId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class ObjectRow(Base):
    """One stored object, and the verifier's job for it."""

    __tablename__ = "objects"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(Text)
    bucket: Mapped[str] = mapped_column(String(255))
    key: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    md5: Mapped[str] = mapped_column(String(32))
    part_size: Mapped[int | None] = mapped_column(BigInteger)
    part_md5s: Mapped[str | None] = mapped_column(Text)  # comma-separated hex
    content_type: Mapped[str] = mapped_column(String(255))
    spool_path: Mapped[str] = mapped_column(Text)
    # the client's Idempotency-Key: a retried upload answers with this object
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    # where the settled event goes; unset: the tenant's default, if any
    callback_url: Mapped[str | None] = mapped_column(Text)

    state: Mapped[str] = mapped_column(String(16))
    phase: Mapped[str] = mapped_column(String(16))
    rounds: Mapped[int] = mapped_column(Integer)  # current round, from 1
    store_attempts: Mapped[int] = mapped_column(Integer)  # all rounds
    round_store_attempts: Mapped[int] = mapped_column(Integer)
    checks: Mapped[int] = mapped_column(Integer)  # all rounds
    round_checks: Mapped[int] = mapped_column(Integer)
    check_errors: Mapped[int] = mapped_column(Integer)  # unknowns on the current check
    stored_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # last OK PUT
    overwrite: Mapped[bool] = mapped_column(Boolean)  # PUT without If-None-Match
    next_action_at: Mapped[datetime] = mapped_column(UTCDateTime)
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_token: Mapped[str | None] = mapped_column(String(32))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    last_error_code: Mapped[str | None] = mapped_column(String(64))
    last_error_detail: Mapped[str | None] = mapped_column(Text)
    error_code: Mapped[str | None] = mapped_column(String(32))
    error_message: Mapped[str | None] = mapped_column(Text)
    etag: Mapped[str | None] = mapped_column(String(128))
    version_id: Mapped[str | None] = mapped_column(String(1024))

    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    verified_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    settle_by: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        CheckConstraint("state IN ('pending', 'verified', 'failed', 'deleted')", name="state"),
        CheckConstraint("phase IN ('storing', 'verifying', 'purging', 'done')", name="phase"),
        # A name is held by at most one live object per tenant; a deleted one
        # keeps it until its bytes are gone from the store, so that a new upload
        # of the name can never be deleted by the old one's purge.
        Index(
            "uq_objects_live_name",
            "tenant",
            "name",
            unique=True,
            sqlite_where=text(LIVE_NAME_PREDICATE),
            postgresql_where=text(LIVE_NAME_PREDICATE),
        ),
        Index(
            "uq_objects_idempotency_key",
            "tenant",
            "idempotency_key",
            unique=True,
            sqlite_where=text("idempotency_key IS NOT NULL"),
            postgresql_where=text("idempotency_key IS NOT NULL"),
        ),
        # The verifier's claim: rows with work left only.
        Index(
            "ix_objects_due",
            "next_action_at",
            sqlite_where=text("phase <> 'done'"),
            postgresql_where=text("phase <> 'done'"),
        ),
        Index("ix_objects_listing", "tenant", "created_at", "id"),
        Index("ix_objects_state_listing", "tenant", "state", "created_at", "id"),
    )


class EventRow(Base):
    """Append-only: every store request and every check, with its outcome."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    object_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("objects.id", ondelete="CASCADE"), index=True
    )
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    round: Mapped[int] = mapped_column(Integer)
    action: Mapped[str] = mapped_column(String(32))
    outcome: Mapped[str] = mapped_column(String(32))
    error_code: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[str | None] = mapped_column(Text)
    http_status: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    worker: Mapped[str | None] = mapped_column(String(128))


class ApiKeyRow(Base):
    """An API key of a tenant. Only its SHA-256 is kept; the key is shown once."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    key_prefix: Mapped[str] = mapped_column(String(16))  # to tell keys apart in listings
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


DELIVERY_PENDING, DELIVERY_DELIVERED, DELIVERY_FAILED = "pending", "delivered", "failed"


class WebhookSettingsRow(Base):
    """A tenant's webhook signing secrets and default callback URL.

    The secret must be kept as is (HMAC needs it): it is shown by the CLI.
    During a rotation the previous secret signs too, until `previous_until`.
    """

    __tablename__ = "webhook_settings"

    tenant: Mapped[str] = mapped_column(String(64), primary_key=True)
    secret: Mapped[str] = mapped_column(String(128))
    previous_secret: Mapped[str | None] = mapped_column(String(128))
    previous_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    default_callback_url: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class DeliveryRow(Base):
    """The outbox: one event for one callback URL, written in the transaction
    that settles the object, and the dispatcher's job until it is delivered or
    its retries run out."""

    __tablename__ = "deliveries"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    object_id: Mapped[str] = mapped_column(String(32), ForeignKey("objects.id", ondelete="CASCADE"))
    tenant: Mapped[str] = mapped_column(String(64))
    number: Mapped[int] = mapped_column(Integer)  # 1, 2, ... per object
    webhook_id: Mapped[str] = mapped_column(String(64))  # the same on every retry
    event_type: Mapped[str] = mapped_column(String(32))
    url: Mapped[str] = mapped_column(Text)
    payload: Mapped[str] = mapped_column(Text)  # the JSON body, fixed when written
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime)
    give_up_at: Mapped[datetime] = mapped_column(UTCDateTime)
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_token: Mapped[str | None] = mapped_column(String(32))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        CheckConstraint("state IN ('pending', 'delivered', 'failed')", name="state"),
        Index("uq_deliveries_object_number", "object_id", "number", unique=True),
        Index(
            "ix_deliveries_due",
            "next_attempt_at",
            sqlite_where=text("state = 'pending'"),
            postgresql_where=text("state = 'pending'"),
        ),
    )


class DeliveryAttemptRow(Base):
    """Append-only: every POST of a delivery, with its outcome."""

    __tablename__ = "delivery_attempts"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    delivery_id: Mapped[int] = mapped_column(
        BigIntId, ForeignKey("deliveries.id", ondelete="CASCADE"), index=True
    )
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    http_status: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[float] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)
    worker: Mapped[str | None] = mapped_column(String(128))
