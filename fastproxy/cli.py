"""Command line: `fastproxy serve | check | version`."""
from __future__ import annotations

import argparse
import sys

from fastproxy import __version__


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser for the whole command line."""
    parser = argparse.ArgumentParser(
        prog="fastproxy",
        description="High-performance HTTP forward and reverse proxy (Cython hot path on uvloop).",
    )
    parser.add_argument("--version", action="version", version=f"fastproxy {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("version", help="print the version and exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `fastproxy` command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "version":
        print(f"fastproxy {__version__}")
        return 0
    parser.print_help()
    return 0 if args.command is None else 2


if __name__ == "__main__":
    sys.exit(main())
