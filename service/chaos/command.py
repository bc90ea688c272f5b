"""`verified-urls chaos-proxy`: the misbehaving store on the command line."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from service.chaos.faults import PROFILES, ConfigError, FaultConfig, config_for, parse_assignment
from service.chaos.proxy import ProxyServer, Upstream

DESCRIPTION = """\
An HTTP proxy for path-style S3 requests that injects the failures real stores
show (error answers, lost PUTs, late visibility, corrupted bytes, slow answers,
resets, latency) at seeded rates. Control API: GET /_chaos/stats,
POST|GET|DELETE /_chaos/script."""


def _listen_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def _assignment(text: str) -> tuple[str, float]:
    try:
        return parse_assignment(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """The command's flags, on any parser (the `chaos-proxy` sub-command or `-m service.chaos`)."""
    parser.add_argument(
        "--upstream", required=True, help="the S3 endpoint, e.g. http://127.0.0.1:9000"
    )
    parser.add_argument(
        "--listen",
        type=_listen_address,
        default=("127.0.0.1", 9100),
        metavar="HOST:PORT",
        help="where to listen (default 127.0.0.1:9100; port 0 picks a free one)",
    )
    parser.add_argument("--profile", choices=sorted(PROFILES), default="none")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault draws (default 0)")
    parser.add_argument(
        "--set",
        dest="overrides",
        type=_assignment,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a rate or setting of the profile; repeatable. Names: "
        + ", ".join(FaultConfig().as_dict()),
    )
    parser.add_argument("--log", type=Path, help="append one JSON line per store request to FILE")
    parser.set_defaults(func=run_command)


def add_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "chaos-proxy",
        help="run the fault-injecting S3 proxy",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    configure_parser(parser)


def run_command(args: argparse.Namespace) -> int:
    try:
        config = config_for(args.profile, dict(args.overrides))
        Upstream.parse(args.upstream)
    except ConfigError as exc:
        print(f"chaos-proxy: {exc}", file=sys.stderr)
        return 2
    host, port = args.listen
    server = ProxyServer(args.upstream, config, args.seed, profile=args.profile, log_path=args.log)
    try:
        asyncio.run(_serve(server, host, port))
    except OSError as exc:  # typically: the port is taken
        print(f"chaos-proxy: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        return 1
    return 0


async def _serve(server: ProxyServer, host: str, port: int) -> None:
    await server.start(host, port)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    # One line a parent process can wait for, with the port when 0 was asked for.
    print(
        f"chaos-proxy listening on http://{host}:{server.port} in front of "
        f"{server.upstream.url} (profile {server.profile}, seed {server.plan.seed})",
        flush=True,
    )
    try:
        await stopping.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        await server.close()
