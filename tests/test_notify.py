"""Wake-ups: LISTEN/NOTIFY across processes, and in-process waiters."""

import asyncio
import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from service.ledger import notify
from service.ledger.models import ObjectRow
from service.verifier.notify import Settlements
from tests.conftest import new_pg_database

WAKE_TIMEOUT_SECONDS = 10.0


@pytest.fixture
def pg_url(pg_template: str) -> Iterator[str]:
    url, drop = new_pg_database(pg_template)
    try:
        yield url
    finally:
        drop()


def test_a_runtime_s_listener_skips_its_own_work_notifications(pg_url: str) -> None:
    """Its own uploads woke its verifier in-process already; another runtime's wake it."""
    woken: list[str] = []
    ready, got_one = threading.Event(), threading.Event()

    def on_work() -> None:
        if not ready.is_set():  # the wake-up every (re)connection starts with
            ready.set()
            return
        woken.append("work")
        got_one.set()

    listener = notify.Listener(pg_url, on_work=on_work, on_settled=lambda _: None, origin="me")
    listener.start()
    engine = create_engine(pg_url)
    try:
        assert ready.wait(WAKE_TIMEOUT_SECONDS)
        for origin in ("me", "me", "someone-else"):
            with Session(engine) as session, session.begin():
                notify.new_work(session, origin)
        assert got_one.wait(WAKE_TIMEOUT_SECONDS)
        with Session(engine) as session, session.begin():
            notify.new_work(session, "me")
        with Session(engine) as session, session.begin():
            notify.new_work(session)  # no origin: from something that is no runtime
        deadline = WAKE_TIMEOUT_SECONDS
        while len(woken) < 2 and deadline > 0:
            got_one.clear()
            got_one.wait(0.1)
            deadline -= 0.1
        assert woken == ["work", "work"]
    finally:
        listener.stop()
        engine.dispose()


def test_waiters_get_the_settled_row_from_an_in_process_notify() -> None:
    async def scenario() -> tuple[ObjectRow | None, ObjectRow | None, ObjectRow | None]:
        settlements = Settlements()
        row = ObjectRow(id="a" * 32, tenant="default", state="verified")
        first = asyncio.ensure_future(settlements.wait(row.id, 5))
        second = asyncio.ensure_future(settlements.wait(row.id, 5))
        await asyncio.sleep(0)
        settlements.notify(row.id, row)
        got = await first, await second
        # from another process (LISTEN) there is only the id: read it from the ledger
        third = asyncio.ensure_future(settlements.wait(row.id, 5))
        await asyncio.sleep(0)
        settlements.notify(row.id)
        return *got, await third

    first, second, third = asyncio.run(scenario())
    assert first is not None and first.state == "verified"
    assert second is first
    assert third is None


def test_queued_webhook_events_wake_dispatchers_elsewhere(pg_url: str) -> None:
    """Only a queued event wakes a dispatcher (a wake-up costs it a query); one
    queued in another process reaches it through NOTIFY."""
    woken = threading.Event()
    calls: list[str] = []

    def on_deliveries() -> None:
        calls.append("deliveries")
        woken.set()

    listener = notify.Listener(
        pg_url, on_work=lambda: None, on_settled=lambda _: None, on_deliveries=on_deliveries
    )
    listener.start()
    engine = create_engine(pg_url)
    try:
        assert woken.wait(WAKE_TIMEOUT_SECONDS)  # every (re)connection starts with one
        woken.clear()
        with Session(engine) as session, session.begin():
            notify.new_work(session, "other")
            notify.settled(session, "a" * 32)
        assert not woken.wait(1.0)
        with Session(engine) as session, session.begin():
            notify.new_deliveries(session)
        assert woken.wait(WAKE_TIMEOUT_SECONDS)
        assert calls == ["deliveries", "deliveries"]
    finally:
        listener.stop()
        engine.dispose()
