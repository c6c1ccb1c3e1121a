"""`llc demo`: train the demo model, sweep λ̂ over its checkpoints, find its stages."""
from __future__ import annotations

import argparse
import logging
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo", help="the whole service on one machine: train-demo → LLC sweep on local Ray → stages and plots",
        description="Trains the attention-only demo model (or reuses its checkpoints), runs the `demo` sweep over "
                    "its checkpoints, aggregates λ̂ over training and prints the stages and the plots' paths. "
                    "Uses the embedded default unless LLC_DATABASE_URL, LLC_STORAGE_URI, MLFLOW_TRACKING_URI or "
                    "RAY_ADDRESS say otherwise.")
    p.add_argument("overrides", nargs="*", help="Hydra overrides for the sweep, e.g. sampler.epsilon=[1e-3]")
    p.add_argument("--small", action="store_true", help="CI size: a short training run and a tiny sweep (~1 min)")
    p.add_argument("--retrain", action="store_true", help="retrain the demo model even if its checkpoints exist")
    p.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    from rich.console import Console

    from services.core.errors import UserError
    from services.cli.aggregate import print_report
    from services.demo import induction_alignment, run_demo
    from workers.demo_training import DemoRunError
    from workers.objectstore import ObjectStoreError

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    console = Console()
    try:
        outcome = run_demo(small=args.small, overrides=args.overrides, retrain=args.retrain,
                           tracking=not args.no_tracking, console=console)
    except (DemoRunError, ObjectStoreError) as exc:
        raise UserError(str(exc)) from exc
    report = outcome.sweep.aggregate
    print_report(report)
    for line in induction_alignment(outcome):
        console.print(line)
    if report.plots:
        console.print(f"[bold]Overview plot:[/bold] {report.plots[0]}")
    for path in report.plots:
        if path.name in ("heads.png", "stages-heads.png"):
            what = "Per-head heatmap" if path.name == "heads.png" else "Stages next to the head scores"
            console.print(f"[bold]{what}:[/bold] {path}")
    failed = outcome.sweep.scheduler.failed if outcome.sweep.scheduler is not None else 0
    return 0 if failed == 0 else 1
