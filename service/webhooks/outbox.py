"""The webhook outbox: what is written when an object settles, the tenants'
secrets and default callback URLs, and replays.

An event is written in the very transaction that settles its object, so a
settled object always has its event, and a rolled-back one never does; the
dispatcher sends it later, from the ledger, surviving restarts and crashes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from service import errors
from service.ledger import deliveries, notify, repository
from service.ledger.models import (
    DELETED,
    FAILED,
    VERIFIED,
    DeliveryAttemptRow,
    DeliveryRow,
    ObjectRow,
    WebhookSettingsRow,
)
from service.records import to_record
from service.settings import Settings
from service.webhooks.signing import new_secret

EVENT_TYPES = {VERIFIED: "object.verified", FAILED: "object.failed"}


def utcnow() -> datetime:
    return datetime.now(UTC)


def event_body(event_type: str, record: dict[str, object], now: datetime) -> str:
    """The Standard Webhooks payload shape: type, timestamp, data (the record)."""
    return json.dumps(
        {"type": event_type, "timestamp": now.isoformat(), "data": record},
        separators=(",", ":"),
    )


@dataclass
class Outbox:
    settings: Settings

    def enqueue_settled(self, session: Session, row: ObjectRow, now: datetime) -> bool:
        """Writes the settled object's event, if it has a callback URL (its own or
        its tenant's default). Runs in the transaction that settles the row."""
        event_type = EVENT_TYPES.get(row.state)
        if event_type is None:
            return False
        url = row.callback_url
        if url is None:
            tenant = deliveries.settings_of(session, row.tenant)
            url = tenant.default_callback_url if tenant is not None else None
        if url is None:
            return False
        record = to_record(row, self.settings).model_dump(mode="json")
        deliveries.enqueue(
            session,
            row,
            event_type,
            url,
            event_body(event_type, record, now),
            now,
            self.give_up_at(now),
        )
        return True

    def give_up_at(self, now: datetime) -> datetime:
        return now + timedelta(seconds=self.settings.WEBHOOK_RETRY_FOR_SECONDS)


def ensure_settings(sessions: sessionmaker[Session], tenant: str) -> WebhookSettingsRow:
    """The tenant's webhook settings, made with a new secret on first use."""
    with sessions() as session:
        found = deliveries.settings_of(session, tenant)
    if found is not None:
        return found
    try:
        with sessions.begin() as session:
            deliveries.add_settings(
                session, WebhookSettingsRow(tenant=tenant, secret=new_secret(), updated_at=utcnow())
            )
    except IntegrityError:
        pass  # another process made them first
    with sessions() as session:
        made = deliveries.settings_of(session, tenant)
    assert made is not None
    return made


def signing_secrets(settings_row: WebhookSettingsRow, now: datetime) -> list[str]:
    """The current secret, and during a rotation the previous one too."""
    found = [settings_row.secret]
    until = settings_row.previous_until
    if settings_row.previous_secret and until is not None and until > now:
        found.append(settings_row.previous_secret)
    return found


def rotate_secret(
    sessions: sessionmaker[Session], tenant: str, overlap_seconds: float
) -> WebhookSettingsRow:
    """A new secret; the old one keeps signing for `overlap_seconds`."""
    ensure_settings(sessions, tenant)
    now = utcnow()
    with sessions.begin() as session:
        row = deliveries.lock_settings(session, tenant)
        assert row is not None
        row.previous_secret = row.secret
        row.previous_until = now + timedelta(seconds=overlap_seconds)
        row.secret = new_secret()
        row.updated_at = now
        return row


def set_default_url(
    sessions: sessionmaker[Session], tenant: str, url: str | None
) -> WebhookSettingsRow:
    ensure_settings(sessions, tenant)
    with sessions.begin() as session:
        row = deliveries.lock_settings(session, tenant)
        assert row is not None
        row.default_callback_url = url
        row.updated_at = utcnow()
        return row


@dataclass(frozen=True)
class DeliveryView:
    delivery: DeliveryRow
    attempts: list[DeliveryAttemptRow]


def deliveries_of(
    sessions: sessionmaker[Session], tenant: str, object_id: str
) -> list[DeliveryView]:
    """An object's deliveries with their attempts; 404 for another tenant's object."""
    with sessions() as session:
        if repository.get_object(session, tenant, object_id) is None:
            raise errors.not_found()
        rows = deliveries.deliveries_of(session, object_id)
        attempts = deliveries.attempts_of(session, [row.id for row in rows])
    return _views(rows, attempts)


def _views(
    rows: Sequence[DeliveryRow], attempts: Sequence[DeliveryAttemptRow]
) -> list[DeliveryView]:
    by_delivery: dict[int, list[DeliveryAttemptRow]] = {row.id: [] for row in rows}
    for attempt in attempts:
        by_delivery[attempt.delivery_id].append(attempt)
    return [DeliveryView(row, by_delivery[row.id]) for row in rows]


def replay(
    sessions: sessionmaker[Session], outbox: Outbox, tenant: str, object_id: str, number: int
) -> DeliveryView:
    """Sends delivery `number` again, as a new delivery with the same webhook-id
    and body (a receiver that already has it can drop it by its id)."""
    now = utcnow()
    with sessions.begin() as session:
        obj = repository.lock_object(session, tenant, object_id)
        if obj is None:
            raise errors.not_found()
        if obj.state == DELETED:
            raise errors.object_deleted()
        original = deliveries.delivery(session, object_id, number)
        if original is None:
            raise errors.not_found(f"the object has no delivery {number}")
        row = deliveries.enqueue(
            session,
            obj,
            original.event_type,
            original.url,
            original.payload,
            now,
            outbox.give_up_at(now),
            webhook_id=original.webhook_id,
        )
        notify.new_deliveries(session)
        return DeliveryView(row, [])
