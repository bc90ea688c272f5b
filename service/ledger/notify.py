"""Wake-ups across processes on PostgreSQL: LISTEN/NOTIFY.

An upload's transaction notifies `verified_urls_work` (with its runtime's
token, so that the runtime's own listener, whose verifier was woken
in-process, skips it), so every worker on any machine wakes at once instead of
at its next poll; a settled object's
transaction notifies `verified_urls_settled` with its id, so a client waiting
on another API process is answered at once. Notifications are delivered at
commit, never for a rolled-back transaction. On SQLite (one process) these are
no-ops: the in-process wake-ups cover it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import psycopg
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

WORK_CHANNEL = "verified_urls_work"
SETTLED_CHANNEL = "verified_urls_settled"
DELIVERIES_CHANNEL = "verified_urls_deliveries"
RECONNECT_SECONDS = 1.0


def _is_postgresql(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def new_work(session: Session, origin: str = "") -> None:
    """`origin`: the sending runtime's token; its own listener skips the
    notification, as its verifier was already woken in-process."""
    if _is_postgresql(session):
        session.execute(
            text("SELECT pg_notify(:channel, :origin)"),
            {"channel": WORK_CHANNEL, "origin": origin},
        )


def new_deliveries(session: Session) -> None:
    """A webhook event was queued: wakes the dispatchers of every process."""
    if _is_postgresql(session):
        session.execute(text("SELECT pg_notify(:channel, '')"), {"channel": DELIVERIES_CHANNEL})


def settled(session: Session, object_id: str) -> None:
    if _is_postgresql(session):
        session.execute(
            text("SELECT pg_notify(:channel, :id)"), {"channel": SETTLED_CHANNEL, "id": object_id}
        )


class Listener:
    """A thread holding one connection that LISTENs; hands each notification to
    `on_work()` or `on_settled(object_id)` (which must be thread-safe)."""

    def __init__(
        self,
        database_url: str,
        on_work: Callable[[], object],
        on_settled: Callable[[str], object],
        origin: str = "",
        on_deliveries: Callable[[], object] = lambda: None,
    ) -> None:
        url = make_url(database_url).set(drivername="postgresql")
        self._dsn = url.render_as_string(hide_password=False)
        self._on_work = on_work
        self._on_settled = on_settled
        self._on_deliveries = on_deliveries
        self._origin = origin  # work notified by this runtime itself is skipped
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pg-listener", daemon=True)

    @staticmethod
    def applies_to(database_url: str) -> bool:
        return make_url(database_url).get_backend_name() == "postgresql"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._listen()
            except psycopg.Error as exc:
                log.warning("LISTEN connection lost (%s); polling covers the gap", exc)
                self._stop.wait(RECONNECT_SECONDS)

    def _listen(self) -> None:
        with psycopg.connect(self._dsn, autocommit=True) as connection:
            connection.execute(f"LISTEN {WORK_CHANNEL}")
            connection.execute(f"LISTEN {SETTLED_CHANNEL}")
            connection.execute(f"LISTEN {DELIVERIES_CHANNEL}")
            # anything that happened while (re)connecting is caught by a wake-up
            self._on_work()
            self._on_deliveries()
            while not self._stop.is_set():
                for notification in connection.notifies(timeout=1.0):
                    if notification.channel == WORK_CHANNEL:
                        if not self._origin or notification.payload != self._origin:
                            self._on_work()
                    elif notification.channel == SETTLED_CHANNEL:
                        self._on_settled(notification.payload)
                    elif notification.channel == DELIVERIES_CHANNEL:
                        self._on_deliveries()
