"""`llc doctor [OVERRIDES]`: checks every configured endpoint; a probe for compose and Kubernetes.

Exits 0 when all is usable, 1 (with one line per problem naming the fix) otherwise.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from services.core.endpoints import Endpoints, resolve_endpoints


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "doctor", help="check the database, object store, MLflow, Ray and cache this machine is configured for",
        description="Checks every endpoint a command run here would use (the tools' own variables or Hydra "
                    "overrides); exits non-zero naming what is wrong and how to fix it.")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. store=postgres cluster=remote")
    parser.add_argument("--quiet", action="store_true", help="print only problems (for probes)")
    parser.set_defaults(func=_doctor)


def targets(overrides: list[str]) -> Endpoints:
    """The one place the doctor resolves endpoints: the same helpers every other command uses."""
    from services.sweeps.config import load_config

    # Without overrides the composed config adds nothing to the variables: skip composing it (a probe runs often).
    return resolve_endpoints(load_config(overrides) if overrides else None)


def _doctor(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from services.doctor import all_ok, run_checks

    t0 = time.perf_counter()
    checks = run_checks(targets(args.overrides))
    elapsed = time.perf_counter() - t0
    if not args.quiet:
        table = Table(title="llc doctor", caption=f"checked in {elapsed:.2f} s")
        for col in ("check", "endpoint", "status", "s", "detail"):
            table.add_column(col, overflow="fold", justify="right" if col == "s" else "left")
        for c in checks:
            table.add_row(c.name, c.target, "[green]ok[/]" if c.ok else "[red]FAIL[/]", f"{c.seconds:.2f}", c.detail)
        Console().print(table)
    for c in checks:
        if not c.ok:
            print(f"llc doctor: {c.name}: {c.detail}", file=sys.stderr)
    return 0 if all_ok(checks) else 1
