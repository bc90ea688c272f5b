"""`verified-urls webhooks`: a tenant's signing secret and default callback URL."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from service.auth import tenant_problem
from service.ledger.database import make_engine, make_sessionmaker, migrate
from service.settings import Settings
from service.webhooks import outbox
from service.webhooks.targets import CallbackRefused, check_callback_url


def add_command(commands: Any) -> None:
    command = commands.add_parser(
        "webhooks", help="webhook signing secrets and default callback URLs of tenants"
    )
    actions = command.add_subparsers(dest="webhooks_command", required=True)
    secret = actions.add_parser("secret", help="print the tenant's signing secret(s)")
    secret.add_argument("--tenant", required=True)
    rotate = actions.add_parser(
        "rotate-secret",
        help="print a new secret; the old one keeps signing for WEBHOOK_SECRET_OVERLAP_SECONDS",
    )
    rotate.add_argument("--tenant", required=True)
    default = actions.add_parser(
        "default-url", help="set (or --clear) the callback URL of uploads that name none"
    )
    default.add_argument("--tenant", required=True)
    target = default.add_mutually_exclusive_group(required=True)
    target.add_argument("url", nargs="?")
    target.add_argument("--clear", action="store_true")
    command.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    problem = tenant_problem(args.tenant)
    if problem is not None:
        print(f"webhooks: {problem}", file=sys.stderr)
        return 2
    settings = Settings()
    if args.webhooks_command == "default-url" and args.url is not None:
        try:
            check_callback_url(args.url, settings.WEBHOOK_ALLOW_PRIVATE_NETWORKS)
        except CallbackRefused as exc:
            print(f"webhooks default-url: {exc}", file=sys.stderr)
            return 2
    migrate(settings.DATABASE_URL)
    engine = make_engine(settings.DATABASE_URL)
    sessions = make_sessionmaker(engine)
    try:
        if args.webhooks_command == "secret":
            row = outbox.ensure_settings(sessions, args.tenant)
            print(row.secret)
            if row.previous_secret and row.previous_until is not None:
                print(
                    f"(the previous secret signs too until {row.previous_until.isoformat()})",
                    file=sys.stderr,
                )
        elif args.webhooks_command == "rotate-secret":
            row = outbox.rotate_secret(
                sessions, args.tenant, settings.WEBHOOK_SECRET_OVERLAP_SECONDS
            )
            print(row.secret)
            assert row.previous_until is not None
            print(
                f"(the previous secret signs too until {row.previous_until.isoformat()})",
                file=sys.stderr,
            )
        else:
            row = outbox.set_default_url(sessions, args.tenant, None if args.clear else args.url)
            print(row.default_callback_url or "(no default callback URL)")
    finally:
        engine.dispose()
    return 0
