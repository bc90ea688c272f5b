"""`verified-urls`: serve, worker, keys, webhooks, migrate, reconcile, chaos-proxy, soak, openapi."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Sequence
from types import FrameType

import yaml

from service.auth import is_loopback
from service.settings import Settings


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from service.app import create_app
    from service.ledger.database import migrate
    from service.settings import Settings

    settings = Settings()
    migrate(settings.DATABASE_URL)
    if not is_loopback(args.host) and _runs_open(settings):
        print(
            f"refusing to serve on {args.host} with no API key configured: the API would be "
            "open to anyone. Create one with `verified-urls keys create --tenant NAME` or "
            "set VERIFIED_URLS_API_KEYS=tenant:key (open mode is for loopback only).",
            file=sys.stderr,
        )
        return 2
    app = create_app(settings, run_worker=not args.no_worker)
    config = uvicorn.Config(
        app, host=args.host, port=args.port, log_level=args.log_level, access_log=False
    )
    server = _orderly_server_class()(config)
    server.run()
    return 0 if server.started else 1


def _runs_open(settings: Settings) -> bool:
    from service.auth import Authenticator, parse_preset_keys
    from service.ledger.database import make_engine, make_sessionmaker

    engine = make_engine(settings.DATABASE_URL)
    try:
        return Authenticator(
            make_sessionmaker(engine), parse_preset_keys(settings.API_KEYS)
        ).is_open()
    finally:
        engine.dispose()


def _keys(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from service.auth import create_key
    from service.ledger import api_keys
    from service.ledger.database import make_engine, make_sessionmaker, migrate

    settings = Settings()
    migrate(settings.DATABASE_URL)
    engine = make_engine(settings.DATABASE_URL)
    sessions = make_sessionmaker(engine)
    try:
        if args.keys_command == "create":
            try:
                row, key = create_key(sessions, args.tenant)
            except ValueError as exc:
                print(f"keys create: {exc}", file=sys.stderr)
                return 2
            print(key)
            print(
                f"(id {row.id}, tenant {row.tenant}; shown once, only its hash is kept)",
                file=sys.stderr,
            )
        elif args.keys_command == "list":
            with sessions() as session:
                for row in api_keys.all_keys(session):
                    revoked = row.revoked_at.isoformat() if row.revoked_at else "active"
                    print(
                        f"{row.id}  {row.tenant:<20} {row.key_prefix}…  "
                        f"{row.created_at.isoformat()}  {revoked}"
                    )
        else:
            with sessions.begin() as session:
                count = api_keys.revoke(session, args.key_id, datetime.now(UTC))
            if count == 0:
                print(
                    f"keys revoke: no active key with id or prefix {args.key_id!r}", file=sys.stderr
                )
                return 1
            print(f"revoked {count} key(s)")
    finally:
        engine.dispose()
    return 0


def _orderly_server_class() -> type:
    import uvicorn

    class OrderlyServer(uvicorn.Server):
        """SIGTERM is the orderly stop: after the graceful shutdown, exit 0.

        uvicorn re-raises a caught SIGTERM once it has shut down, so supervisors
        would see every stop as death by signal (status 143)."""

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            super().handle_exit(sig, frame)
            if sig == signal.SIGTERM and sig in self._captured_signals:
                self._captured_signals.remove(sig)

    return OrderlyServer


def _worker(_: argparse.Namespace) -> int:
    import asyncio

    from service.ledger.database import migrate
    from service.settings import Settings
    from service.worker_process import run_worker

    settings = Settings()
    migrate(settings.DATABASE_URL)
    return asyncio.run(run_worker(settings))


def _migrate(_: argparse.Namespace) -> int:
    from service.ledger.database import migrate
    from service.settings import Settings

    migrate(Settings().DATABASE_URL)
    print("ledger migrated to head")
    return 0


def openapi_document() -> dict[str, object]:
    from service.app import create_app
    from service.settings import Settings

    return create_app(Settings()).openapi()


def _openapi(args: argparse.Namespace) -> int:
    document = openapi_document()
    if args.json:
        json.dump(document, sys.stdout, indent=2)
        print()
    else:
        yaml.safe_dump(document, sys.stdout, sort_keys=False, allow_unicode=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="verified-urls", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="migrate, then serve the API and the verifier")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--no-worker", action="store_true", help="the API alone, no verifier")
    serve.add_argument("--log-level", default="info")
    serve.set_defaults(func=_serve)

    keys = commands.add_parser("keys", help="API keys: create, list, revoke")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = key_commands.add_parser("create", help="print a new key for a tenant (once)")
    create.add_argument("--tenant", required=True)
    key_commands.add_parser("list", help="list keys (id, tenant, prefix, state)")
    revoke = key_commands.add_parser("revoke", help="revoke a key by its id or prefix")
    revoke.add_argument("key_id")
    keys.set_defaults(func=_keys)

    worker = commands.add_parser(
        "worker", help="the verifier alone, no HTTP (several may share one PostgreSQL ledger)"
    )
    worker.set_defaults(func=_worker)

    migrate = commands.add_parser("migrate", help="apply the ledger's migrations")
    migrate.set_defaults(func=_migrate)

    from service import chaos, reconcile, soak
    from service.webhooks import command as webhooks

    reconcile.add_command(commands)
    webhooks.add_command(commands)
    chaos.add_command(commands)
    soak.add_command(commands)

    openapi = commands.add_parser("openapi", help="print the OpenAPI document (YAML)")
    openapi.add_argument("--json", action="store_true")
    openapi.set_defaults(func=_openapi)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("alembic", "httpx", "botocore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
