"""The verifier: claim due rows, act on the store, record, release.

It works only from the ledger, so a restart resumes where it stopped. A row is
kept (lease renewed) while its next step is due at once, so the common path
(PUT, then the first check right after) costs one claim and two writes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

from sqlalchemy.orm import Session, sessionmaker

from service.ledger import notify, repository, transitions
from service.ledger.models import DONE, FAILED, PURGING, STORING, VERIFIED, ObjectRow
from service.spool import Spool
from service.storage.base import (
    NotFound,
    ObjectStore,
    PreconditionFailed,
    PutRequest,
    Rejected,
    StoreCall,
    StoreCalls,
    StoreError,
)
from service.verifier.notify import Settlements, sleep_until_woken
from service.verifier.policy import Policy
from service.webhooks.outbox import Outbox

log = logging.getLogger(__name__)
T = TypeVar("T")


def utcnow() -> datetime:
    return datetime.now(UTC)


def make_owner_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass
class VerifierConfig:
    concurrency: int
    lease_seconds: float
    poll_seconds: float
    shutdown_seconds: float = 8.0  # how long a stop waits for steps in flight


class Verifier:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        store: ObjectStore,
        policy: Policy,
        config: VerifierConfig,
        settlements: Settlements,
        executor: ThreadPoolExecutor,
        owner: str | None = None,
        rng: random.Random | None = None,
        outbox: Outbox | None = None,
        on_event_queued: Callable[[], None] = lambda: None,
    ) -> None:
        self._sessions = sessions
        self._store = store
        self._policy = policy
        self._config = config
        self._settlements = settlements
        self._executor = executor
        self.owner = owner or make_owner_name()
        self._rng = rng or random.Random()
        self._outbox = outbox
        self._on_event_queued = on_event_queued
        self._wake = asyncio.Event()
        self._held: dict[str, str] = {}  # object id -> lease token
        self._tasks: set[asyncio.Task[None]] = set()

    def wake(self) -> None:
        """Called after an upload commits, so it is stored at once, not at the next poll."""
        self._wake.set()

    def _slot_freed(self, task: asyncio.Task[None]) -> None:
        """A finished row frees a slot: claim more at once, not at the next poll."""
        self._tasks.discard(task)
        self._wake.set()

    async def _in_thread(self, func: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, func)

    async def run(self, stop: asyncio.Event) -> None:
        heartbeat = asyncio.create_task(self._renew_leases_forever(stop))
        try:
            while not stop.is_set():
                free = self._config.concurrency - len(self._tasks)
                # Cleared before claiming: a wake-up from here on (an upload, a slot
                # freed) makes the sleep below return at once instead of being lost.
                self._wake.clear()
                claimed = await self._claim(free) if free > 0 else []
                for row in claimed:
                    task = asyncio.create_task(self._work_on(row))
                    self._tasks.add(task)
                    task.add_done_callback(self._slot_freed)
                if len(claimed) == free and free > 0:
                    await asyncio.sleep(0)  # more may be due: claim again at once
                    continue
                await self._sleep_until_due(stop)
        finally:
            heartbeat.cancel()
            if self._tasks:
                await asyncio.wait(self._tasks, timeout=self._config.shutdown_seconds)
            self._abandon_unfinished()

    async def _claim(self, limit: int) -> list[ObjectRow]:
        def claim() -> list[ObjectRow]:
            with self._sessions.begin() as session:
                return repository.claim_due(
                    session, self.owner, utcnow(), self._config.lease_seconds, limit
                )

        try:
            rows = await self._in_thread(claim)
        except Exception:
            log.exception("claiming work failed; trying again shortly")
            return []
        for row in rows:
            assert row.lease_token is not None
            self._held[row.id] = row.lease_token
        return rows

    async def _sleep_until_due(self, stop: asyncio.Event) -> None:
        due = None
        if not self._tasks:
            try:
                due = await self._in_thread(self._next_due)
            except Exception:
                due = None
        await sleep_until_woken(self._wake, stop, self._config.poll_seconds, due)

    def _next_due(self) -> datetime | None:
        with self._sessions() as session:
            return repository.next_due_at(session)

    async def _work_on(self, row: ObjectRow) -> None:
        token = self._held[row.id]
        try:
            while True:
                calls = await self.step(row)
                keep = row.phase != DONE and row.next_action_at <= utcnow()
                saved = await self._save(row, token, keep, calls)
                if not saved:
                    log.warning("lost the lease on %s; another worker has it", row.id)
                    return
                if not keep:
                    if row.state in (VERIFIED, FAILED):
                        self._settled(row)
                    return
        except Exception:
            log.exception("working on %s failed; its lease will expire and it is retried", row.id)
        finally:
            self._held.pop(row.id, None)

    def _settled(self, row: ObjectRow) -> None:
        Spool.release(row.spool_path)
        self._settlements.notify(row.id, row)  # as committed: waiters need not read it back

    async def _save(self, row: ObjectRow, token: str, keep: bool, calls: list[StoreCall]) -> bool:

        queued: list[bool] = []

        def save() -> bool:
            now = utcnow()
            with self._sessions.begin() as session:
                until = now + timedelta(seconds=self._config.lease_seconds) if keep else None
                if not repository.save_step(session, row, token, keep_lease_until=until):
                    session.rollback()
                    return False
                repository.add_events(session, row.id, row.rounds, calls, now, self.owner)
                if row.state in (VERIFIED, FAILED):
                    # the event is written with the state change, or not at all
                    if self._outbox is not None and self._outbox.enqueue_settled(session, row, now):
                        notify.new_deliveries(session)  # dispatchers elsewhere, at commit
                        queued.append(True)
                    notify.settled(session, row.id)  # clients waiting elsewhere, at commit
                return True

        saved = await self._in_thread(save)
        if queued:
            self._on_event_queued()  # only then: a wake-up costs the dispatcher a query
        return saved

    async def step(self, row: ObjectRow) -> list[StoreCall]:
        """One action on the row: deadline check, PUT, check, or purge. Applies its outcome."""
        calls = StoreCalls()
        now = utcnow()
        if row.phase == PURGING:
            await self._purge_step(row, calls)
        elif now >= row.settle_by:
            transitions.deadline_passed(row, now)
        elif row.phase == STORING:
            await self._store_step(row, calls)
        else:
            await self._check_step(row, calls)
        return calls.calls

    async def _store_step(self, row: ObjectRow, calls: StoreCalls) -> None:
        source = Path(row.spool_path)
        if not source.exists():
            transitions.spool_missing(row, utcnow())
            return
        request = PutRequest(
            key=row.key,
            source=source,
            size=row.size,
            md5_hex=row.md5,
            content_type=row.content_type,
            part_size=row.part_size,
            part_md5s=tuple(row.part_md5s.split(",")) if row.part_md5s else (),
            if_none_match=not row.overwrite,
        )
        try:
            result = await self._in_thread(lambda: self._store.put(request, calls))
        except PreconditionFailed:
            transitions.put_found_existing(row, utcnow())
        except FileNotFoundError:
            transitions.spool_missing(row, utcnow())
        except StoreError as exc:
            permanent = isinstance(exc, Rejected)
            transitions.put_failed(row, exc, permanent, self._policy, utcnow(), self._rng)
        else:
            transitions.put_succeeded(row, result.etag, result.version_id, utcnow())

    async def _purge_step(self, row: ObjectRow, calls: StoreCalls) -> None:
        """Deletes the bytes of a deleted object, then checks that they are gone."""

        def purge() -> None:
            self._store.delete(row.key, calls)
            self._store.head(row.key, calls)

        try:
            await self._in_thread(purge)
        except NotFound:
            transitions.purge_done(row, utcnow())
        except StoreError as exc:
            transitions.purge_failed(row, exc, self._policy, utcnow(), self._rng)
        else:
            still = StoreError("StillVisible", "the store still shows it after the DELETE")
            transitions.purge_failed(row, still, self._policy, utcnow(), self._rng)

    async def _check_step(self, row: ObjectRow, calls: StoreCalls) -> None:
        try:
            info = await self._in_thread(lambda: self._store.head(row.key, calls))
            verdict = transitions.content_verdict(row, info)
            if verdict == "read":
                size, sha256 = await self._in_thread(
                    lambda: self._store.read_sha256(row.key, calls)
                )
                verdict = "pass" if (size, sha256) == (row.size, row.sha256) else "mismatch"
        except NotFound:
            transitions.check_missing(row, self._policy, utcnow())
            return
        except StoreError as exc:
            transitions.check_unknown(row, exc, self._policy, utcnow(), self._rng)
            return
        if verdict == "pass":
            transitions.check_passed(row, info, utcnow())
        else:
            calls.calls[-1].outcome = "mismatch"
            detail = f"store has size {info.size} ETag {info.etag}"
            transitions.check_mismatched(row, self._policy, detail, utcnow())

    async def _renew_leases_forever(self, stop: asyncio.Event) -> None:
        interval = self._config.lease_seconds / 3
        while not stop.is_set():
            await asyncio.sleep(interval)
            tokens = list(self._held.values())
            if not tokens:
                continue

            def renew(tokens: list[str] = tokens) -> None:
                with self._sessions.begin() as session:
                    until = utcnow() + timedelta(seconds=self._config.lease_seconds)
                    repository.renew_leases(session, tokens, until)

            try:
                await self._in_thread(renew)
            except Exception:
                log.exception("renewing leases failed")

    def _abandon_unfinished(self) -> None:
        """Steps still running after the grace period keep their leases: a store
        request may still be in flight in its thread, and handing the row to another
        worker now could store it twice at once. Without renewal the leases lapse
        within LEASE_SECONDS, and another worker resolves the row by checking."""
        for task in self._tasks:
            task.cancel()
        if self._held:
            log.warning(
                "stopping with %d objects mid-step; their leases lapse in %.0f s",
                len(self._held),
                self._config.lease_seconds,
            )
