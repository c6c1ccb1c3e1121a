"""The `llc` command: one sub-module per group of subcommands.

Each module in SUBCOMMAND_MODULES exposes `register(subparsers) -> None`, adding its
subcommands with `set_defaults(func=handler)`; a handler takes the parsed args and
returns an exit code. Errors meant for the user are raised as `UserError` and printed
as one sentence, without a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from services.core.errors import UserError

SUBCOMMAND_MODULES: tuple[str, ...] = (
    "services.cli.demo",
    "services.cli.aggregate",
    "services.cli.db",
    "services.cli.doctor",
    "services.cli.export",
    "services.cli.nightly",
    "services.cli.sweeps",
    "services.cli.sync",
    "services.cli.train_demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llc", description="Local learning coefficient sweeps over training checkpoints.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"llc: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("llc: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
