"""In-process wake-ups for clients waiting on an object (long-poll)."""

from __future__ import annotations

import asyncio


class Settlements:
    """Waiters for objects leaving `pending`. Waiters also re-read the ledger on a
    timer, so an object settled by another process is seen too."""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}
        self._waiters: dict[str, int] = {}

    def notify(self, object_id: str) -> None:
        event = self._events.get(object_id)
        if event is not None:
            event.set()

    async def wait(self, object_id: str, timeout_seconds: float) -> None:
        """Returns when notified or after the timeout, whichever comes first."""
        event = self._events.setdefault(object_id, asyncio.Event())
        self._waiters[object_id] = self._waiters.get(object_id, 0) + 1
        try:
            await asyncio.wait_for(event.wait(), timeout=max(0.0, timeout_seconds))
        except TimeoutError:
            pass
        finally:
            self._waiters[object_id] -= 1
            if self._waiters[object_id] == 0:
                del self._waiters[object_id]
                del self._events[object_id]
