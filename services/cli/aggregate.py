"""`llc aggregate SWEEP`: λ̂ over training, stages, stability and plots for one sweep.

SWEEP is a sweep id or name (the newest sweep of that name). Prints the stages table, the
stability verdicts, the recommended setting and where the plots are.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from services.core.endpoints import resolve_endpoints
from services.core.errors import UserError


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "aggregate", help="λ̂ over training per setting, developmental stages, plots (store + MLflow)",
        description="Aggregate a sweep's results: λ̂ curves per hyperparameter setting, stages, the "
                    "recommended setting, PNG plots; stages go to the store, curves and plots to MLflow.")
    parser.add_argument("sweep", metavar="SWEEP", help="sweep id or name (a name means its newest sweep)")
    parser.add_argument("--database-url", default=None, metavar="URL",
                        help="results store (default: LLC_DATABASE_URL, else the embedded SQLite file)")
    parser.add_argument("--out-dir", type=Path, default=None, metavar="DIR",
                        help="where plots and tables go (default: $LLC_HOME/aggregates/sweep-ID)")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log the aggregate run to MLflow")
    parser.add_argument("--z", type=float, default=3.0,
                        help="noise units a stage's λ̂ change must exceed (default 3)")
    parser.add_argument("--r-hat", type=float, default=1.1, dest="r_hat",
                        help="R-hat below which a setting counts as converged (default 1.1)")
    parser.set_defaults(func=_aggregate)


def resolve_sweep_id(sweep: str, database_url: str) -> int:
    """An id as given, or the newest sweep with that name."""
    from services.store.db import ensure_schema, session_scope
    from services.store.sweeps import find_sweep

    if sweep.isdigit():
        return int(sweep)
    ensure_schema(database_url)
    with session_scope(database_url) as session:
        return find_sweep(session, sweep).id


def print_report(report: Any) -> None:
    """The stages table, stability, recommendation and plot paths (also used by `llc demo`)."""
    from rich.console import Console

    console = Console()
    console.print(report.table())
    console.print(report.stability_table())
    if report.recommended is not None:
        console.print(f"[bold]Recommended setting:[/bold] {report.recommended.label} — {report.recommended.reason}")
    else:
        console.print("[bold yellow]No recommended setting:[/bold yellow] no setting is converged, stable and free of divergences.")
    left = report.left_out
    if left:
        console.print("Left out of the curves: " + ", ".join(f"{n} {status}" for status, n in sorted(left.items())))
    console.print(f"Stages typed by: {report.loss_source}; fits on log(step + 1) (step 0 kept)")
    for note in report.notes:
        console.print(f"note: {note}")
    for path in report.plots:
        console.print(f"plot: {path}")
    for uri in report.artifact_uris:
        console.print(f"stored: {uri}")
    if report.mlflow_run_id:
        console.print(f"MLflow aggregate run: {report.mlflow_run_id} (parent {report.parent_run_id})")


def _aggregate(args: argparse.Namespace) -> int:
    from services.aggregator import aggregate_sweep
    from services.tracking import Tracker

    ends = resolve_endpoints()
    url = args.database_url or ends.database_url
    sweep_id = resolve_sweep_id(args.sweep, url)
    tracker = None if args.no_mlflow else Tracker(ends.tracking_uri)
    report = aggregate_sweep(sweep_id=sweep_id, database_url=url, out_dir=args.out_dir, tracker=tracker,
                             log_to_mlflow=tracker is not None, z=args.z, r_hat_threshold=args.r_hat,
                             storage_uri=ends.storage_uri)
    print_report(report)
    if report.tracking_error:
        raise UserError(f"{report.tracking_error} (stages are stored and plots written under {report.out_dir})")
    return 0
