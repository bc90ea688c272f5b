"""`python -m service.chaos --upstream URL ...`: the chaos-proxy command without the CLI."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from service.chaos.command import DESCRIPTION, configure_parser, run_command


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m service.chaos",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    configure_parser(parser)
    return run_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
