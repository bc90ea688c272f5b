"""The claim under a real race: separate processes, one PostgreSQL ledger.

Eight worker processes, each with its own engine, are released together by a
barrier and call the claim at the same instant, round after round, on one small
batch of due rows (their leases are expired between rounds, so every round
starts from a fully claimable batch). Within a round no row may be claimed by
two workers.

The same harness runs once against a deliberately broken claim (a plain SELECT
of due rows, a few milliseconds of delay, then an UPDATE of the lease: no
`FOR UPDATE SKIP LOCKED`, no lease check) and must catch a double claim;
otherwise the harness could not tell a correct claim from a broken one and
would prove nothing.
"""

from __future__ import annotations

import multiprocessing
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from service.ledger import repository
from service.ledger.database import make_engine, make_sessionmaker
from service.ledger.models import PENDING, ObjectRow
from tests.factories import object_row

WORKERS = 8
BATCH = 12
LIMIT = 4
ROUNDS = 12
MAX_BROKEN_ROUNDS = 30
LEASE_SECONDS = 30.0
# between the broken claim's SELECT and its UPDATE: a window other workers can enter
BROKEN_GAP_SECONDS = 0.005
BARRIER_TIMEOUT_SECONDS = 30.0
JOIN_TIMEOUT_SECONDS = 10.0

ClaimFunction = Callable[[Session, str, datetime, float, int], list[ObjectRow]]


def broken_claim(
    session: Session, owner: str, now: datetime, lease_seconds: float, limit: int
) -> list[ObjectRow]:
    """What `repository.claim_due` does, minus what makes it safe: no row locks
    (`FOR UPDATE SKIP LOCKED`) and no lease check, only due pending rows read and
    then leased."""
    rows = list(
        session.scalars(
            select(ObjectRow)
            .where(ObjectRow.state == PENDING, ObjectRow.next_action_at <= now)
            .order_by(ObjectRow.next_action_at)
            .limit(limit)
        )
    )
    time.sleep(BROKEN_GAP_SECONDS)
    expires = now + timedelta(seconds=lease_seconds)
    for row in rows:
        row.lease_owner = owner
        row.lease_token = uuid.uuid4().hex
        row.lease_expires_at = expires
    session.flush()
    return rows


# By name, so that a spawned process finds the function in its own import.
CLAIMS: dict[str, ClaimFunction] = {"claim_due": repository.claim_due, "broken": broken_claim}


@dataclass(frozen=True)
class Claim:
    """What one worker got in one round: (row id, lease token) pairs, or an error."""

    worker: int
    round: int
    leases: tuple[tuple[str, str], ...]
    error: str | None = None

    @property
    def ids(self) -> list[str]:
        return [object_id for object_id, _ in self.leases]


@dataclass(frozen=True)
class Round:
    number: int
    claims: list[Claim]

    def counts(self) -> Counter[str]:
        return Counter(object_id for claim in self.claims for object_id in claim.ids)

    def double_claimed(self) -> list[str]:
        return sorted(object_id for object_id, n in self.counts().items() if n > 1)

    def claimants(self) -> int:
        """How many workers came away with at least one row."""
        return sum(1 for claim in self.claims if claim.leases)


def _claimer(
    worker: int,
    database_url: str,
    claim_name: str,
    start: Any,
    done: Any,
    stop: Any,
    results: Any,
) -> None:
    """One worker process: at each release of `start`, one claim in one transaction."""
    claim = CLAIMS[claim_name]
    engine = make_engine(database_url, pool_size=1)
    sessions = make_sessionmaker(engine)
    owner = f"race:{worker}:{uuid.uuid4().hex[:6]}"
    try:
        with engine.connect():
            pass  # connected before the first release, so that all start together
        number = 0
        while True:
            start.wait(BARRIER_TIMEOUT_SECONDS)
            if stop.is_set():
                return
            number += 1
            try:
                with sessions.begin() as session:
                    rows = claim(session, owner, datetime.now(UTC), LEASE_SECONDS, LIMIT)
                    leases = tuple((row.id, str(row.lease_token)) for row in rows)
                # reported only once committed: a claim that did not commit is no claim
                results.put(Claim(worker, number, leases))
            except Exception as exc:  # a deadlock, say: reported, not hidden
                results.put(Claim(worker, number, (), repr(exc)))
            done.wait(BARRIER_TIMEOUT_SECONDS)
    finally:
        engine.dispose()


@pytest.fixture
def race_database(pg_template: str) -> Iterator[str]:
    # imported here: every spawned worker imports this module, and needs none of it
    from tests.conftest import new_pg_database

    url, drop = new_pg_database(pg_template)
    try:
        yield url
    finally:
        drop()


def insert_batch(database_url: str) -> list[str]:
    engine = make_engine(database_url, pool_size=1)
    try:
        with make_sessionmaker(engine).begin() as session:
            due = datetime.now(UTC) - timedelta(minutes=1)
            rows = [
                object_row(
                    key=f"race/{index:02d}",
                    next_action_at=due + timedelta(milliseconds=index),
                )
                for index in range(BATCH)
            ]
            for row in rows:
                repository.insert_object(session, row)
            return [row.id for row in rows]
    finally:
        engine.dispose()


def expire_leases(sessions: Any) -> None:
    """Makes every row of the batch claimable again: its lease ran out a second ago."""
    with sessions.begin() as session:
        session.execute(
            update(ObjectRow)
            .where(ObjectRow.lease_expires_at.is_not(None))
            .values(lease_expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )


def tokens_in_ledger(sessions: Any) -> dict[str, str | None]:
    with sessions() as session:
        return {row.id: row.lease_token for row in session.scalars(select(ObjectRow))}


def run_race(
    database_url: str,
    claim_name: str,
    max_rounds: int,
    *,
    until_double_claim: bool = False,
    after_round: Callable[[Round], None] | None = None,
) -> list[Round]:
    """Starts WORKERS processes and runs up to `max_rounds` rounds of simultaneous claims."""
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(WORKERS + 1)
    done = context.Barrier(WORKERS + 1)
    stop = context.Event()
    results = context.Queue()
    processes = [
        context.Process(
            target=_claimer,
            args=(worker, database_url, claim_name, start, done, stop, results),
            name=f"claimer-{worker}",
            daemon=True,
        )
        for worker in range(WORKERS)
    ]
    engine = make_engine(database_url, pool_size=1)
    sessions = make_sessionmaker(engine)
    rounds: list[Round] = []
    try:
        for process in processes:
            process.start()
        for number in range(1, max_rounds + 1):
            expire_leases(sessions)
            start.wait(BARRIER_TIMEOUT_SECONDS)  # the release: all claim at once
            done.wait(BARRIER_TIMEOUT_SECONDS)
            claims = [results.get(timeout=BARRIER_TIMEOUT_SECONDS) for _ in range(WORKERS)]
            assert {claim.round for claim in claims} == {number}
            race = Round(number, sorted(claims, key=lambda claim: claim.worker))
            rounds.append(race)
            if after_round is not None:
                after_round(race)
            if until_double_claim and race.double_claimed():
                break
        stop.set()
        start.wait(BARRIER_TIMEOUT_SECONDS)  # lets the workers see `stop` and leave
    except BaseException:
        stop.set()
        start.abort()
        done.abort()
        raise
    finally:
        for process in processes:
            process.join(JOIN_TIMEOUT_SECONDS)
            if process.is_alive():
                process.kill()
                process.join()
            process.close()
        results.close()
        results.join_thread()
        engine.dispose()
    return rounds


def summary(rounds: list[Round]) -> str:
    return "\n".join(
        f"round {race.number:2d}: "
        + " ".join(f"w{claim.worker}={len(claim.leases)}" for claim in race.claims)
        + f" | claimed {sum(race.counts().values())} rows, {len(race.counts())} distinct"
        + (f", double: {len(race.double_claimed())}" if race.double_claimed() else "")
        for race in rounds
    )


def test_skip_locked_claims_never_take_a_row_twice(race_database: str) -> None:
    batch = set(insert_batch(race_database))
    engine = make_engine(race_database, pool_size=1)
    sessions = make_sessionmaker(engine)

    def ledger_agrees(race: Round) -> None:
        # The ledger holds, for every claimed row, the token of its one claimant.
        in_ledger = tokens_in_ledger(sessions)
        for claim in race.claims:
            for object_id, token in claim.leases:
                assert in_ledger[object_id] == token, (race.number, claim.worker, object_id)

    try:
        started = time.monotonic()
        rounds = run_race(race_database, "claim_due", ROUNDS, after_round=ledger_agrees)
        elapsed = time.monotonic() - started
    finally:
        engine.dispose()
    print(f"\nclaim_due, {WORKERS} processes, limit {LIMIT}, batch {BATCH} ({elapsed:.1f} s):")
    print(summary(rounds))

    assert len(rounds) == ROUNDS
    errors = [claim for race in rounds for claim in race.claims if claim.error]
    assert not errors, errors
    for race in rounds:
        counts = race.counts()
        assert not race.double_claimed(), f"round {race.number}: {race.double_claimed()}"
        assert set(counts) <= batch, f"round {race.number} claimed rows outside the batch"
        assert sum(counts.values()) <= BATCH
        # every row was free and the workers could take 32: SKIP LOCKED leaves none behind
        assert set(counts) == batch, f"round {race.number} left {batch - set(counts)} unclaimed"
    tokens = [token for race in rounds for claim in race.claims for _, token in claim.leases]
    assert len(tokens) == len(set(tokens)), "a lease token was handed out twice"
    # the race was real: the batch was shared out among several workers at once
    assert max(race.claimants() for race in rounds) >= 2


def test_the_harness_catches_a_broken_claim(race_database: str) -> None:
    batch = set(insert_batch(race_database))
    started = time.monotonic()
    rounds = run_race(race_database, "broken", MAX_BROKEN_ROUNDS, until_double_claim=True)
    elapsed = time.monotonic() - started
    print(f"\nbroken claim, {WORKERS} processes ({elapsed:.1f} s):")
    print(summary(rounds))

    caught = [race for race in rounds if race.double_claimed()]
    assert caught, (
        f"{len(rounds)} rounds never caught the broken claim taking a row twice: "
        "the race harness proves nothing"
    )
    first = caught[0]
    assert set(first.counts()) <= batch
    print(
        f"caught in round {first.number}: {len(first.double_claimed())} rows claimed "
        f"by several workers (up to {max(first.counts().values())} at once)"
    )
