"""The ``swim`` command."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import trio

from swim import __version__
from swim.demo import run_demo
from swim.wire.crypto import encode_key


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="swim",
        description="shoal: gossip membership that speaks HashiCorp memberlist's wire protocol.",
    )
    parser.add_argument("--version", action="version", version=f"swim (shoal) {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser(
        "demo", help="show the wire format at work over loopback sockets"
    ).set_defaults(run=_demo)
    keygen = commands.add_parser(
        "keygen", help="print a new base64 AES-256 key for -encrypt (as `serf keygen` does)"
    )
    keygen.set_defaults(run=_keygen)
    return parser


def _demo(_: argparse.Namespace) -> int:
    trio.run(run_demo)
    return 0


def _keygen(_: argparse.Namespace) -> int:
    print(encode_key(os.urandom(32)))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``swim`` command line; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    status: int = args.run(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
