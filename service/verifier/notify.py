"""In-process wake-ups for clients waiting on an object (long-poll)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from service.ledger.models import ObjectRow


class Settlements:
    """Waiters for objects leaving `pending`. Waiters also re-read the ledger on a
    timer, so an object settled by another process is seen too."""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}
        self._waiters: dict[str, int] = {}
        self._rows: dict[str, ObjectRow] = {}

    def notify(self, object_id: str, row: ObjectRow | None = None) -> None:
        """Wakes the object's waiters. `row`: the record as just committed by this
        process, handed to them so that they need not read it back."""
        event = self._events.get(object_id)
        if event is not None:
            if row is not None:
                self._rows[object_id] = row
            event.set()

    async def wait(self, object_id: str, timeout_seconds: float) -> ObjectRow | None:
        """Returns when notified or after the timeout, whichever comes first: the
        committed row if the notifier gave it, else None (read it from the ledger)."""
        event = self._events.setdefault(object_id, asyncio.Event())
        self._waiters[object_id] = self._waiters.get(object_id, 0) + 1
        try:
            await asyncio.wait_for(event.wait(), timeout=max(0.0, timeout_seconds))
        except TimeoutError:
            pass
        finally:
            self._waiters[object_id] -= 1
            row = self._rows.get(object_id)
            if self._waiters[object_id] == 0:
                del self._waiters[object_id]
                del self._events[object_id]
                self._rows.pop(object_id, None)
        return row


async def sleep_until_woken(
    wake: asyncio.Event, stop: asyncio.Event, poll_seconds: float, due: datetime | None
) -> None:
    """An idle loop's sleep: until woken, stopped, the next due time, or the poll."""
    timeout = poll_seconds
    if due is not None:
        timeout = min(timeout, max(0.0, (due - datetime.now(UTC)).total_seconds()))
    waiters = [asyncio.ensure_future(wake.wait()), asyncio.ensure_future(stop.wait())]
    await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    for waiter in waiters:
        waiter.cancel()
