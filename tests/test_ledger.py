"""The ledger on SQLite and PostgreSQL, schema made by the real migrations."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, create_engine
from sqlalchemy.exc import IntegrityError

from service.ledger import repository
from service.ledger.database import make_engine, make_sessionmaker
from service.ledger.models import FAILED, VERIFIED, Base
from service.storage.base import StoreCall
from tests.factories import object_row


@pytest.fixture
def engine(database_url: str) -> Engine:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


def test_migrations_match_the_models(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            diff = compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()
    assert diff == []


def test_timestamps_come_back_timezone_aware(engine: Engine) -> None:
    sessions = make_sessionmaker(engine)
    row = object_row()
    with sessions.begin() as session:
        repository.insert_object(session, row)
    with sessions() as session:
        loaded = repository.get_object(session, "default", row.id)
    assert loaded is not None and loaded.created_at.tzinfo is not None
    assert abs(loaded.created_at - row.created_at) < timedelta(milliseconds=1)


def test_a_live_name_is_unique_per_tenant(engine: Engine) -> None:
    sessions = make_sessionmaker(engine)
    with sessions.begin() as session:
        repository.insert_object(session, object_row(name="n"))
        repository.insert_object(session, object_row(name="n", tenant="other"))
        repository.insert_object(session, object_row(name="n", state=FAILED))
    with pytest.raises(IntegrityError), sessions.begin() as session:
        repository.insert_object(session, object_row(name="n", state=VERIFIED))
    with sessions() as session:
        assert repository.live_name_exists(session, "default", "n")
        assert not repository.live_name_exists(session, "default", "m")
        held = repository.pending_bytes(session)
        assert held > 0
        assert repository.live_name_and_pending_bytes(session, "default", "n") == (True, held)
        assert repository.live_name_and_pending_bytes(session, "default", "m") == (False, held)
        assert repository.live_name_and_pending_bytes(session, "other", "m") == (False, held)


def test_claim_takes_due_unleased_rows_once(engine: Engine) -> None:
    sessions = make_sessionmaker(engine)
    now = datetime.now(UTC)
    due = [object_row(next_action_at=now - timedelta(seconds=1)) for _ in range(3)]
    later = object_row(next_action_at=now + timedelta(hours=1))
    with sessions.begin() as session:
        for row in [*due, later]:
            repository.insert_object(session, row)
    with sessions.begin() as session:
        first = repository.claim_due(session, "w1", now, 30, limit=10)
    with sessions.begin() as session:
        second = repository.claim_due(session, "w2", now, 30, limit=10)
    assert {r.id for r in first} == {r.id for r in due}
    assert second == []
    # an expired lease is taken over, with a new token
    with sessions.begin() as session:
        taken = repository.claim_due(session, "w2", now + timedelta(seconds=31), 30, limit=10)
    assert {r.id for r in taken} == {r.id for r in due}
    assert {r.lease_token for r in taken}.isdisjoint({r.lease_token for r in first})


def test_a_lost_lease_can_no_longer_write(engine: Engine) -> None:
    sessions = make_sessionmaker(engine)
    now = datetime.now(UTC)
    with sessions.begin() as session:
        repository.insert_object(session, object_row(next_action_at=now))
    with sessions.begin() as session:
        (old,) = repository.claim_due(session, "w1", now, 30, limit=1)
    with sessions.begin() as session:
        (new,) = repository.claim_due(session, "w2", now + timedelta(seconds=60), 30, limit=1)
    assert old.lease_token is not None and new.lease_token is not None
    old.state = VERIFIED
    with sessions.begin() as session:
        assert not repository.save_step(session, old, old.lease_token, keep_lease_until=None)
    new.state = FAILED
    with sessions.begin() as session:
        assert repository.save_step(session, new, new.lease_token, keep_lease_until=None)
    with sessions() as session:
        loaded = repository.get_object(session, "default", new.id)
    assert loaded is not None and loaded.state == FAILED and loaded.lease_token is None


def test_events_are_appended_in_order(engine: Engine) -> None:
    sessions = make_sessionmaker(engine)
    row = object_row()
    now = datetime.now(UTC)
    with sessions.begin() as session:
        repository.insert_object(session, row)
        repository.add_events(
            session,
            row.id,
            1,
            [
                StoreCall("put", "error", 0.01, "AccessDenied", "no", 403),
                StoreCall("put", "ok", 0.02),
            ],
            now,
            "w1",
        )
    with sessions() as session:
        events = repository.events_for(session, row.id)
    assert [(e.action, e.outcome, e.error_code, e.http_status) for e in events] == [
        ("put", "error", "AccessDenied", 403),
        ("put", "ok", None, None),
    ]


def test_listing_pages_newest_first(engine: Engine) -> None:
    sessions = make_sessionmaker(engine)
    base = datetime.now(UTC)
    rows = [object_row(created_at=base + timedelta(seconds=i)) for i in range(5)]
    with sessions.begin() as session:
        for row in rows:
            repository.insert_object(session, row)
    with sessions() as session:
        page1 = repository.list_objects(session, "default", None, 2, None)
        page2 = repository.list_objects(
            session, "default", None, 2, (page1[-1].created_at, page1[-1].id)
        )
    assert [r.id for r in [*page1, *page2]] == [r.id for r in reversed(rows)][:4]
