"""The webhook dispatcher: claim due deliveries, POST them signed, record, release.

It runs beside the verifier in every `serve` and `worker` process, leased like
the rest of the work, so any of them may send any event. At-least-once: a
process that dies after its POST but before recording it leaves the lease to
expire, and the event goes out again with the same `webhook-id`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import httpx
from sqlalchemy.orm import Session, sessionmaker

from service.ledger import deliveries
from service.ledger.models import (
    DELIVERY_DELIVERED,
    DELIVERY_FAILED,
    DeliveryAttemptRow,
    DeliveryRow,
)
from service.settings import Settings
from service.verifier.notify import sleep_until_woken
from service.webhooks import outbox, signing
from service.webhooks.targets import CallbackRefused, pinned_request

log = logging.getLogger(__name__)
T = TypeVar("T")
USER_AGENT = "verified-urls-webhooks/1"
MAX_ERROR_CHARS = 500


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Outcome:
    http_status: int | None
    error: str | None
    latency_ms: float

    @property
    def delivered(self) -> bool:
        return self.http_status is not None and 200 <= self.http_status < 300


def retry_wait_seconds(settings: Settings, attempts: int, rng: random.Random) -> float:
    """Doubling from the base, capped, with jitter so retries do not come in waves."""
    ceiling = min(
        settings.WEBHOOK_RETRY_MAX_SECONDS,
        settings.WEBHOOK_RETRY_BASE_SECONDS * float(2 ** min(attempts - 1, 30)),
    )
    return ceiling * rng.uniform(0.75, 1.0)


def apply_outcome(
    row: DeliveryRow, outcome: Outcome, settings: Settings, now: datetime, rng: random.Random
) -> None:
    row.attempts += 1
    row.last_status = outcome.http_status
    row.last_error = outcome.error
    if outcome.delivered:
        row.state = DELIVERY_DELIVERED
        row.delivered_at = now
        return
    due = now + timedelta(seconds=retry_wait_seconds(settings, row.attempts, rng))
    if due > row.give_up_at:
        row.state = DELIVERY_FAILED  # retried for WEBHOOK_RETRY_FOR_SECONDS: give up
    else:
        row.next_attempt_at = due


class Dispatcher:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        settings: Settings,
        executor: ThreadPoolExecutor,
        owner: str,
        poll_seconds: float,
        shutdown_seconds: float = 8.0,
        rng: random.Random | None = None,
    ) -> None:
        self._sessions = sessions
        self._settings = settings
        self._executor = executor
        self.owner = owner
        self._poll_seconds = poll_seconds
        self._shutdown_seconds = shutdown_seconds
        self._rng = rng or random.Random()
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    def wake(self) -> None:
        """Called when an object settles (here or, through NOTIFY, elsewhere)."""
        self._wake.set()

    async def _in_thread(self, func: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, func)

    async def run(self, stop: asyncio.Event) -> None:
        timeout = httpx.Timeout(self._settings.webhook_timeout_seconds)
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=False) as client:
            try:
                await self._loop(client, stop)
            finally:
                if self._tasks:
                    await asyncio.wait(self._tasks, timeout=self._shutdown_seconds)
                for task in self._tasks:
                    task.cancel()  # its lease lapses and the event is sent again

    async def _loop(self, client: httpx.AsyncClient, stop: asyncio.Event) -> None:
        concurrency = self._settings.WEBHOOK_CONCURRENCY
        while not stop.is_set():
            free = concurrency - len(self._tasks)
            self._wake.clear()
            claimed = await self._claim(free) if free > 0 else []
            for row, token in claimed:
                task = asyncio.create_task(self._deliver(client, row, token))
                self._tasks.add(task)
                task.add_done_callback(self._slot_freed)
            if claimed and len(claimed) == free:
                continue
            await self._sleep_until_due(stop)

    def _slot_freed(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._wake.set()

    async def _claim(self, limit: int) -> list[tuple[DeliveryRow, str]]:
        def claim() -> list[tuple[DeliveryRow, str]]:
            with self._sessions.begin() as session:
                rows = deliveries.claim_due(
                    session, self.owner, utcnow(), self._settings.LEASE_SECONDS, limit
                )
                return [(row, row.lease_token or "") for row in rows]

        try:
            return await self._in_thread(claim)
        except Exception:
            log.exception("claiming deliveries failed; trying again shortly")
            return []

    async def _sleep_until_due(self, stop: asyncio.Event) -> None:
        due = None
        if not self._tasks:

            def next_due() -> datetime | None:
                with self._sessions() as session:
                    return deliveries.next_due_at(session)

            try:
                due = await self._in_thread(next_due)
            except Exception:
                due = None
        await sleep_until_woken(self._wake, stop, self._poll_seconds, due)

    async def _deliver(self, client: httpx.AsyncClient, row: DeliveryRow, token: str) -> None:
        try:
            started = utcnow()
            outcome = await self._post(client, row)
            now = utcnow()
            apply_outcome(row, outcome, self._settings, now, self._rng)
            attempt = DeliveryAttemptRow(
                delivery_id=row.id,
                at=started,
                http_status=outcome.http_status,
                latency_ms=round(outcome.latency_ms, 3),
                error=outcome.error,
                worker=self.owner,
            )

            def save() -> bool:
                with self._sessions.begin() as session:
                    return deliveries.record_attempt(session, row, token, attempt)

            if not await self._in_thread(save):
                log.warning("lost the lease on delivery %s; another worker has it", row.id)
        except Exception:
            log.exception("delivering %s failed; its lease will expire and it is retried", row.id)

    async def _post(self, client: httpx.AsyncClient, row: DeliveryRow) -> Outcome:
        settings_row = await self._in_thread(
            lambda: outbox.ensure_settings(self._sessions, row.tenant)
        )
        allow_private = self._settings.WEBHOOK_ALLOW_PRIVATE_NETWORKS
        start = time.monotonic()
        try:
            # checked again before every attempt, and sent to the address checked
            url, host, extensions = await self._in_thread(
                lambda: pinned_request(row.url, allow_private)
            )
        except CallbackRefused as exc:
            return Outcome(None, f"refused: {exc}", 0.0)
        body = row.payload.encode()
        headers = signing.headers(
            outbox.signing_secrets(settings_row, utcnow()), row.webhook_id, int(time.time()), body
        )
        headers.update({"content-type": "application/json", "user-agent": USER_AGENT, **host})
        try:
            # the whole attempt is bounded (a receiver trickling its answer out
            # must not hold the slot past the lease), and the answer's body is
            # never read: only its status counts
            async with asyncio.timeout(self._settings.webhook_timeout_seconds):
                async with client.stream(
                    "POST", url, content=body, headers=headers, extensions=extensions
                ) as answer:
                    status = answer.status_code
        except TimeoutError:
            limit = self._settings.webhook_timeout_seconds
            return Outcome(None, f"no answer within {limit:g} s", (time.monotonic() - start) * 1000)
        except Exception as exc:  # any failure to send is this attempt's outcome
            error = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
            return Outcome(None, error, (time.monotonic() - start) * 1000)
        latency_ms = (time.monotonic() - start) * 1000
        return Outcome(status, None if 200 <= status < 300 else f"HTTP {status}", latency_ms)
