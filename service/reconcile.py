"""`verified-urls reconcile`: what a crash can leave in the store.

Aborts incomplete multipart uploads older than a bound (a crashed worker's
parts cost storage and are never completed), and reports the objects in the
bucket that no pending or verified row accounts for. It never deletes an
object: a human decides.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from service.ledger import repository
from service.ledger.database import make_engine, make_sessionmaker
from service.runtime import build_store
from service.settings import Settings

PAGE_KEYS = 1000


def reconcile(settings: Settings, abort_older_than_seconds: float) -> dict[str, Any]:
    store = build_store(settings)
    cutoff = datetime.now(UTC) - timedelta(seconds=abort_older_than_seconds)
    aborted = store.abort_stale_uploads(cutoff)
    engine = make_engine(settings.DATABASE_URL)
    unaccounted: list[str] = []
    seen = 0
    try:
        sessions = make_sessionmaker(engine)
        page: list[str] = []
        for key in store.list_keys():
            page.append(key)
            if len(page) == PAGE_KEYS:
                unaccounted += _unaccounted(sessions, settings.BUCKET, page)
                seen += len(page)
                page = []
        unaccounted += _unaccounted(sessions, settings.BUCKET, page)
        seen += len(page)
    finally:
        engine.dispose()
    return {
        "bucket": settings.BUCKET,
        "aborted_uploads": len(aborted),
        "aborted_upload_keys": aborted,
        "objects_seen": seen,
        "unaccounted": unaccounted,
    }


def _unaccounted(sessions: Any, bucket: str, keys: list[str]) -> list[str]:
    if not keys:
        return []
    with sessions() as session:
        live = repository.live_keys_among(session, bucket, keys)
    return [key for key in keys if key not in live]


def add_command(commands: Any) -> None:
    command = commands.add_parser(
        "reconcile",
        help="abort stale multipart uploads; report objects no ledger row accounts for",
    )
    command.add_argument(
        "--abort-uploads-older-than-seconds",
        type=float,
        default=3600.0,
        help="incomplete multipart uploads started longer ago are aborted (default 3600)",
    )
    command.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    report = reconcile(Settings(), args.abort_uploads_older_than_seconds)
    print(json.dumps(report, indent=2))
    return 0
