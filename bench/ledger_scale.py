"""The ledger at 1,000 and at 1,000,000 rows, side by side in one run: status
read latency through the API, the verifier's claim query, and their plans.

    .venv/bin/python bench/ledger_scale.py

Two throwaway PostgreSQL databases, both migrated by the real migrations, are
filled in SQL (INSERT ... SELECT FROM generate_series): mostly `verified`, 1%
`pending` with due times spread from an hour ago to an hour ahead (about half
due), 0.5% `failed`; then VACUUM (ANALYZE), as autovacuum would. Each database
gets its own `verified-urls serve --no-worker` (moto's server behind it, so
that start-up works), and the figures are taken interleaved (one request to the
small ledger, one to the large, alternating which goes first), so that whatever
else the shared machine does falls on both alike:

(a) `GET /v1/objects/{id}` for random existing ids, sequentially, from a client
    on loopback with keep-alive, after a warm-up;
(b) `repository.claim_due(...)` in this process, in a transaction that is then
    rolled back (the data stays the same), after a warm-up.

At the large size it prints `EXPLAIN (ANALYZE, BUFFERS)` of both queries,
captured from the service's own repository functions as they run, and whether
each uses an index; also whether the generic plan (what a prepared statement
may switch to after a few executions) still does.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import harness
import httpx
import psycopg
from harness import Processes, Timeout, percentile, pg_url
from psycopg import sql
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session

from service.ledger import repository

PG_PREFIX = "bench_scale_"
TENANT = "default"
BUCKET = "bench-scale"
INDEX_IN_PLAN = re.compile(
    r"(?:Index(?: Only)? Scan(?: Backward)? using|Bitmap Index Scan on) (\S+)"
)

FILL_SQL = """
INSERT INTO objects (
    id, tenant, name, bucket, key, size, sha256, md5, part_size, part_md5s, content_type,
    spool_path, state, phase, rounds, store_attempts, round_store_attempts, checks,
    round_checks, check_errors, stored_at, overwrite, next_action_at, lease_owner,
    lease_token, lease_expires_at, last_error_code, last_error_detail, error_code,
    error_message, etag, version_id, created_at, updated_at, verified_at, settle_by)
SELECT
    md5('bench-' || i),
    %(tenant)s,
    'bench/object-' || lpad(i::text, 8, '0'),
    %(bucket)s,
    'bench/object-' || lpad(i::text, 8, '0'),
    1024 + i %% 4096,
    md5('sha-a-' || i) || md5('sha-b-' || i),
    md5('md5-' || i),
    NULL,
    NULL,
    'application/octet-stream',
    '/var/spool/verified-urls/' || md5('bench-' || i),
    s.state,
    CASE WHEN s.state <> 'pending' THEN 'done'
         WHEN i %% 2 = 0 THEN 'storing' ELSE 'verifying' END,
    1,
    CASE WHEN s.state = 'pending' AND i %% 2 = 0 THEN 0 ELSE 1 END,
    CASE WHEN s.state = 'pending' AND i %% 2 = 0 THEN 0 ELSE 1 END,
    CASE WHEN s.state = 'verified' THEN 1 ELSE 0 END,
    CASE WHEN s.state = 'verified' THEN 1 ELSE 0 END,
    0,
    CASE WHEN s.state = 'pending' AND i %% 2 = 0 THEN NULL ELSE t.created + interval '0.3 s' END,
    false,
    CASE WHEN s.state = 'pending' THEN t.due ELSE t.created + interval '0.4 s' END,
    NULL,
    NULL,
    NULL,
    CASE WHEN s.state = 'failed' THEN 'NotFound' END,
    CASE WHEN s.state = 'failed' THEN 'HEAD answered 404' END,
    CASE WHEN s.state = 'failed' THEN 'never_visible' END,
    CASE WHEN s.state = 'failed' THEN 'the store never showed the object' END,
    CASE WHEN s.state = 'verified' THEN '"' || md5('md5-' || i) || '"' END,
    NULL,
    t.created,
    t.created + interval '0.4 s',
    CASE WHEN s.state = 'verified' THEN t.created + interval '0.4 s' END,
    t.created + interval '2 hours'
FROM generate_series(1::bigint, %(rows)s::bigint) AS i,
LATERAL (
    SELECT CASE WHEN i %% %(pending_every)s = 0 THEN 'pending'
                WHEN i %% %(failed_every)s = 1 THEN 'failed'
                ELSE 'verified' END AS state
) AS s,
LATERAL (
    SELECT
        -- pending rows are recent; the rest spread over the last 30 days, in order
        CASE WHEN i %% %(pending_every)s = 0
             THEN now() - make_interval(secs => 3600 + (i * 7919) %% 600)
             ELSE now() - make_interval(secs => 30 * 86400.0 * (%(rows)s - i) / %(rows)s)
        END AS created,
        -- due from an hour ago to an hour ahead
        now() + make_interval(secs => ((i / %(pending_every)s * 7919) %% 7200) - 3600) AS due
) AS t
"""


@dataclass
class Ledger:
    label: str
    rows: int
    database: str
    fill_seconds: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    engine: Engine | None = None
    api_url: str = ""

    @property
    def url(self) -> str:
        return pg_url(self.database, "postgresql+psycopg")

    def object_id(self, index: int) -> str:
        return hashlib.md5(f"bench-{index}".encode()).hexdigest()


def fill(ledger: Ledger, pending_every: int, failed_every: int) -> None:
    started = time.monotonic()
    with psycopg.connect(pg_url(ledger.database), autocommit=True) as connection:
        connection.execute("SET statement_timeout = '20min'")
        connection.execute("SET maintenance_work_mem = '256MB'")
        with connection.transaction():
            connection.execute(
                FILL_SQL.encode(),
                {
                    "rows": ledger.rows,
                    "tenant": TENANT,
                    "bucket": BUCKET,
                    "pending_every": pending_every,
                    "failed_every": failed_every,
                },
            )
        connection.execute("VACUUM (ANALYZE) objects")
        ledger.fill_seconds = time.monotonic() - started
        ledger.counts = {
            str(state): int(count)
            for state, count in connection.execute(
                "SELECT state, count(*) FROM objects GROUP BY state ORDER BY state"
            ).fetchall()
        }
        due = connection.execute(
            "SELECT count(*) FROM objects WHERE state = 'pending' AND next_action_at <= now()"
        ).fetchone()
        ledger.counts["pending and due"] = int(due[0]) if due else 0
        size_row = connection.execute(
            "SELECT pg_relation_size('objects'), pg_indexes_size('objects')"
        ).fetchone()
        assert size_row is not None
        ledger.sizes = {"table": int(size_row[0]), "indexes": int(size_row[1])}


# ---------------------------------------------------------------- measuring


def interleaved(
    ledgers: list[Ledger], count: int, measure: Callable[[Ledger, int], float]
) -> dict[str, list[float]]:
    """`count` timings per ledger, alternating which ledger goes first."""
    timings: dict[str, list[float]] = {ledger.label: [] for ledger in ledgers}
    for round_number in range(count):
        order = ledgers if round_number % 2 == 0 else list(reversed(ledgers))
        for ledger in order:
            timings[ledger.label].append(measure(ledger, round_number))
    return timings


def status_reads(
    ledgers: list[Ledger], reads: int, warmup: int, api_key: str | None, seed: int
) -> dict[str, list[float]]:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    rng = random.Random(seed)
    clients = {
        ledger.label: httpx.Client(base_url=ledger.api_url, headers=headers, timeout=30)
        for ledger in ledgers
    }

    def read(ledger: Ledger, _: int) -> float:
        object_id = ledger.object_id(rng.randint(1, ledger.rows))
        client = clients[ledger.label]
        started = time.perf_counter()
        answer = client.get(f"/v1/objects/{object_id}")
        elapsed = time.perf_counter() - started
        if answer.status_code != 200 or answer.json()["id"] != object_id:
            raise RuntimeError(f"GET {object_id}: {answer.status_code} {answer.text[:200]}")
        return elapsed

    try:
        interleaved(ledgers, warmup, read)
        return interleaved(ledgers, reads, read)
    finally:
        for client in clients.values():
            client.close()


def claims(
    ledgers: list[Ledger], count: int, warmup: int, limit: int
) -> tuple[dict[str, list[float]], dict[str, set[int]]]:
    claimed: dict[str, set[int]] = {ledger.label: set() for ledger in ledgers}

    def claim(ledger: Ledger, _: int) -> float:
        assert ledger.engine is not None
        with Session(ledger.engine) as session:
            transaction = session.begin()
            started = time.perf_counter()
            rows = repository.claim_due(session, "bench-scale", datetime.now(UTC), 30.0, limit)
            elapsed = time.perf_counter() - started
            transaction.rollback()
        claimed[ledger.label].add(len(rows))
        return elapsed

    interleaved(ledgers, warmup, claim)
    return interleaved(ledgers, count, claim), claimed


# ---------------------------------------------------------------- plans


@contextmanager
def captured_sql(engine: Engine) -> Iterator[list[tuple[str, Any]]]:
    """The statements (and parameters) the service's code sends, as it sends them."""
    statements: list[tuple[str, Any]] = []

    def capture(
        _conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, many: bool
    ) -> None:
        statements.append((statement, parameters[0] if many else parameters))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", capture)


@dataclass
class Plan:
    what: str
    statement: str
    text: str
    generic_indexes: list[str]
    generic_seq_scan: bool

    @property
    def indexes(self) -> list[str]:
        return INDEX_IN_PLAN.findall(self.text)

    @property
    def seq_scan(self) -> bool:
        return "Seq Scan" in self.text


def explain(engine: Engine, what: str, statement: str, parameters: Any) -> Plan:
    """EXPLAIN ANALYZE (in a rolled-back transaction: the claim locks and the
    update writes), and the generic plan of the same statement."""
    with engine.connect() as connection:
        transaction = connection.begin()
        result = connection.exec_driver_sql(
            "EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters
        ).fetchall()
        transaction.rollback()
    text = "\n".join(str(line[0]) for line in result)
    # The generic plan: parameters unknown at planning time.
    names: list[str] = []

    def placeholder(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    numbered = re.sub(r"%\((\w+)\)s", placeholder, statement)
    with psycopg.connect(engine.url.set(drivername="postgresql").render_as_string(False)) as raw:
        raw.execute("SET plan_cache_mode = force_generic_plan")
        raw.execute(f"PREPARE bench_plan AS {numbered}".encode())
        values = ", ".join(sql.Literal(parameters[name]).as_string(raw) for name in names)
        execute = f"EXPLAIN EXECUTE bench_plan({values})" if names else "EXPLAIN EXECUTE bench_plan"
        generic_rows = raw.execute(execute.encode()).fetchall()
        raw.rollback()
    generic = "\n".join(str(line[0]) for line in generic_rows)
    return Plan(what, statement, text, INDEX_IN_PLAN.findall(generic), "Seq Scan" in generic)


def plans(ledger: Ledger, limit: int) -> list[Plan]:
    assert ledger.engine is not None
    engine = ledger.engine
    object_id = ledger.object_id(ledger.rows // 2)
    with Session(engine) as session, captured_sql(engine) as statements:
        row = repository.get_object(session, TENANT, object_id)
        assert row is not None
    read_sql, read_params = statements[0]
    with Session(engine) as session, captured_sql(engine) as statements:
        transaction = session.begin()
        rows = repository.claim_due(session, "bench-scale", datetime.now(UTC), 30.0, limit)
        transaction.rollback()
    assert rows, "the claim found no due row"
    claim_sql, claim_params = statements[0]
    update_sql, update_params = statements[1]
    return [
        explain(engine, "status read (repository.get_object)", read_sql, read_params),
        explain(engine, "claim query (repository.claim_due: SELECT)", claim_sql, claim_params),
        explain(engine, "claim query (repository.claim_due: UPDATE)", update_sql, update_params),
    ]


# ---------------------------------------------------------------- report


def mib(value: int) -> str:
    return f"{value / 1024**2:.0f} MiB"


def print_setup(args: argparse.Namespace) -> None:
    load = os.getloadavg()
    print("bench/ledger_scale.py: the ledger at two sizes, side by side")
    print(f"  date          {datetime.now(UTC).isoformat(timespec='seconds')}")
    print(
        f"  machine       nproc {os.cpu_count()}, load average "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at start, Python {sys.version.split()[0]}"
    )
    print(f"  sizes         {args.small_rows:,} and {args.large_rows:,} rows")
    print(
        f"  mix           1 in {args.pending_every} pending (due from -1 h to +1 h), "
        f"1 in {args.failed_every} failed, the rest verified"
    )
    print(
        f"  status reads  {args.reads} per size, random existing ids, sequential, keep-alive, "
        f"after {args.warmup} warm-up reads; interleaved between the sizes"
    )
    print(
        f"  claims        {args.claims} per size, limit {args.claim_limit}, rolled back, "
        f"after {args.warmup // 10} warm-up claims; interleaved"
    )
    print(f"  api key       {'given (sent as a Bearer token)' if args.api_key else 'none'}")
    print(flush=True)


def print_figures(title: str, timings: dict[str, list[float]], small: str, large: str) -> float:
    print(title)
    print(f"  {'':>10} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8} {'n':>6}")
    figures: dict[str, tuple[float, float, float, float]] = {}
    for label in (small, large):
        values = timings[label]
        figures[label] = (
            percentile(values, 0.5) * 1000,
            percentile(values, 0.9) * 1000,
            percentile(values, 0.99) * 1000,
            max(values) * 1000,
        )
        p50, p90, p99, top = figures[label]
        print(f"  {label:>10} {p50:>8.2f} {p90:>8.2f} {p99:>8.2f} {top:>8.2f} {len(values):>6}")
    ratios = [figures[large][i] / figures[small][i] for i in range(4)]
    print(
        f"  {'ratio':>10} {ratios[0]:>7.2f}x {ratios[1]:>7.2f}x {ratios[2]:>7.2f}x "
        f"{ratios[3]:>7.2f}x   ({large} / {small})"
    )
    return ratios[2]


def print_plan(plan: Plan) -> None:
    print(f"--- EXPLAIN (ANALYZE, BUFFERS) of the {plan.what}")
    print("    " + " ".join(plan.statement.split()))
    for line in plan.text.splitlines():
        print("    " + line)
    used = ", ".join(plan.indexes) or "none"
    verdict = "yes" if plan.indexes and not plan.seq_scan else "NO"
    print(f"    uses an index: {verdict} ({used}{'; has a Seq Scan' if plan.seq_scan else ''})")
    generic = "yes" if plan.generic_indexes and not plan.generic_seq_scan else "NO"
    print(
        f"    generic plan (prepared statement) uses an index: {generic} "
        f"({', '.join(plan.generic_indexes) or 'none'}"
        f"{'; has a Seq Scan' if plan.generic_seq_scan else ''})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small-rows", type=int, default=1_000)
    parser.add_argument("--large-rows", type=int, default=1_000_000)
    parser.add_argument("--pending-every", type=int, default=100, help="1 in N rows pending")
    parser.add_argument("--failed-every", type=int, default=200, help="1 in N rows failed")
    parser.add_argument("--reads", type=int, default=3000, help="status reads per size")
    parser.add_argument("--claims", type=int, default=200, help="claims per size")
    parser.add_argument(
        "--claim-limit",
        type=int,
        default=4,
        help="rows per claim (default 4: a worker claims its free slots, mostly a few; the "
        "1,000-row ledger has only about 5 due rows, and both sizes should claim as many)",
    )
    parser.add_argument("--warmup", type=int, default=300, help="warm-up reads per size")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout-seconds", type=int, default=1800, help="bound on the run")
    parser.add_argument("--api-key", default=None, help="sent as `Authorization: Bearer KEY`")
    args = parser.parse_args()

    def on_alarm(_signum: int, _frame: FrameType | None) -> None:
        raise Timeout(f"the run took longer than {args.timeout_seconds} s")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(args.timeout_seconds)
    print_setup(args)
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    processes = Processes(work, harness.base_env())
    small_label, large_label = f"{args.small_rows:,}", f"{args.large_rows:,}"
    try:
        with harness.throwaway_databases(PG_PREFIX, ["small", "large"]) as (small_db, large_db):
            ledgers = [
                Ledger(small_label, args.small_rows, small_db),
                Ledger(large_label, args.large_rows, large_db),
            ]
            for ledger in ledgers:
                fill(ledger, args.pending_every, args.failed_every)
                print(
                    f"filled {ledger.label:>9} rows in {ledger.fill_seconds:6.1f} s "
                    f"(incl. VACUUM ANALYZE): {ledger.counts}; table "
                    f"{mib(ledger.sizes['table'])}, indexes {mib(ledger.sizes['indexes'])}",
                    flush=True,
                )

            moto = harness.start_moto(processes)
            for ledger in ledgers:
                env = harness.service_env(
                    database_url=ledger.url,
                    endpoint_url=moto.url,
                    bucket=BUCKET,
                    spool_dir=work / f"spool-{ledger.rows}",
                    profile="strong",
                    # it measures the ledger, not the per-tenant read limit
                    TENANT_READS_PER_SECOND=0,
                )
                api = harness.start_service(
                    processes, env, worker=False, log_name=f"api-{ledger.rows}.log"
                )
                ledger.api_url = api.url
                ledger.engine = create_engine(ledger.url, pool_size=2)

            read_timings = status_reads(ledgers, args.reads, args.warmup, args.api_key, args.seed)
            claim_timings, claimed = claims(
                ledgers, args.claims, max(1, args.warmup // 10), args.claim_limit
            )
            large_plans = plans(ledgers[1], args.claim_limit)
            for ledger in ledgers:
                if ledger.engine is not None:
                    ledger.engine.dispose()
    finally:
        signal.alarm(0)
        processes.stop_all()
        shutil.rmtree(work, ignore_errors=True)

    print()
    read_ratio = print_figures(
        "(a) status read, GET /v1/objects/{id} through the API (client-side latency)",
        read_timings,
        small_label,
        large_label,
    )
    print()
    print_figures(
        "(b) claim query, repository.claim_due(limit "
        f"{args.claim_limit}) in a rolled-back transaction (SELECT ... FOR UPDATE SKIP LOCKED"
        " + lease UPDATE)",
        claim_timings,
        small_label,
        large_label,
    )
    print(
        "  rows claimed per call: "
        + ", ".join(f"{label}: {sorted(sizes)}" for label, sizes in claimed.items())
    )
    print()
    print(f"plans at {large_label} rows:")
    for plan in large_plans:
        print_plan(plan)
    print()
    verdict = "MET" if read_ratio <= 2.0 else "NOT MET"
    print(
        f"target: status read p99 at {large_label} rows within 2x of the one at {small_label} "
        f"-> {read_ratio:.2f}x: {verdict}"
    )
    all_indexed = all(plan.indexes and not plan.seq_scan for plan in large_plans)
    print(f"both queries use an index at {large_label} rows: {'yes' if all_indexed else 'NO'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
