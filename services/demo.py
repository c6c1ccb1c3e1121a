"""`llc demo`: the whole service on one machine, in one command.

Trains the attention-only demo model (or reuses its checkpoints), runs an LLC sweep over
its checkpoints on local Ray, aggregates λ̂ over training into stages and plots, and says
how the stages line up with the induction heads forming. With LLC_DATABASE_URL,
LLC_STORAGE_URI/AWS_ENDPOINT_URL_S3, MLFLOW_TRACKING_URI or RAY_ADDRESS set, the same
command uses those services instead of the embedded default.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.console import Console

from services.core.endpoints import resolve_endpoints
from services.run import RunOutcome, run_sweep
from services.store.db import ensure_schema
from services.sweeps.config import load_config
from services.tracking import Tracker
from workers.demo_training import DemoRun, DemoSettings, train_demo

#: The CI-size demo: short training and a tiny sweep, in its own run prefix.
SMALL_TRAINING = {"steps": 400, "num_checkpoints": 10, "dataset_sequences": 256}
SMALL_OVERRIDES = ("sweep=small", "sweep.run=demo-run-small", "sweep.dataset.uri=demo-run-small/dataset")


@dataclass
class DemoOutcome:
    run: DemoRun
    sweep: RunOutcome


def run_demo(*, small: bool = False, overrides: Sequence[str] = (), retrain: bool = False, tracking: bool = True,
             console: Console | None = None) -> DemoOutcome:
    console = console or Console()
    # Resolve the config first: a bad override is refused before any work is done.
    cfg = load_config([*(SMALL_OVERRIDES if small else ("sweep=demo",)), *overrides])
    ends = resolve_endpoints(cfg)
    run_uri = ends.under_storage(cfg.sweep.run)
    # An un-migrated Postgres is refused now, not after training (SQLite is upgraded in place).
    ensure_schema(ends.database_url)

    console.rule("[bold]1/3 · demo training run[/bold]")
    settings = DemoSettings(**SMALL_TRAINING) if small else DemoSettings()
    run = train_demo(run_uri, settings, force=retrain, show_progress=True)
    formed = run.formed_at_step
    verb = "reused" if run.reused else f"trained in {run.wall_time_s:.0f}s"
    console.print(f"{run_uri}: {len(run.checkpoints)} checkpoints ({verb}); induction heads form at step "
                  f"{formed if formed is not None else '(not within this run)'}")

    console.rule("[bold]2/3 · LLC sweep over the checkpoints[/bold]")
    tracker = None
    if tracking:
        tracker = Tracker(ends.tracking_uri)
    outcome = run_sweep(cfg, console=console, tracker=tracker)

    console.rule("[bold]3/3 · λ̂ over training and developmental stages[/bold]")
    return DemoOutcome(run=run, sweep=outcome)


def induction_alignment(outcome: DemoOutcome) -> list[str]:
    """Sentences relating the stages of each setting to the step where the induction heads formed."""
    formed = outcome.run.formed_at_step
    report = outcome.sweep.aggregate
    if report is None or formed is None:
        return []
    lines = []
    for curve in report.curves:
        stages = report.stages_for(curve.key)
        hit = next((st for st in stages if st.start_step <= formed <= st.end_step), None)
        if hit is None:
            lines.append(f"{curve.label}: no stage found around step {formed}, where the induction heads form.")
            continue
        loss = "" if hit.loss_change is None else f", loss {hit.loss_change:+.3g}"
        lines.append(f"{curve.label}: the induction heads form at step {formed}, inside a type-{hit.kind} stage "
                     f"(steps {hit.start_step}–{hit.end_step}: λ̂ {hit.llc_change:+.3g}{loss}).")
    return lines
