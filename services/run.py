"""Submit a sweep and run it to the end in this process: `llc run` and `llc demo`.

One machine's way to use the service: the same submission, scheduler and aggregation
as the distributed path, with a local Ray started (and stopped) here when RAY_ADDRESS is
unset. Aggregation runs in the foreground at the end so its report can be printed.
"""
from __future__ import annotations

from dataclasses import dataclass

import ray
from rich.console import Console

from services.aggregator import AggregateReport, aggregate_sweep
from services.core.errors import UserError
from services.core.status import TERMINAL_STATUSES
from services.scheduler.cluster import connect, disconnect
from services.scheduler.loop import JobEvent, Scheduler, SchedulerOptions, SchedulerReport
from services.sweeps import views
from services.sweeps.schema import LLCConfig
from services.sweeps.submit import SubmitOutcome, plan_sweep, submit_plan
from services.tracking import Tracker


@dataclass
class RunOutcome:
    sweep_id: int
    submitted: SubmitOutcome
    scheduler: SchedulerReport | None   # None when nothing had to run
    aggregate: AggregateReport | None


def max_in_flight(requested: int | None, num_cpus_per_job: float) -> int:
    """Enough tasks to keep every CPU busy, plus one batch queued behind them."""
    if requested is not None:
        if requested < 1:
            raise UserError(f"--max-in-flight must be at least 1, got {requested}.")
        return requested
    cpus = float(ray.cluster_resources().get("CPU", 1.0))
    return max(1, int(cpus // max(num_cpus_per_job, 1e-9)) * 2)


def run_sweep(cfg: LLCConfig, *, console: Console, tracker: Tracker | None, requested_in_flight: int | None = None,
              lease_seconds: float = 120.0, poll_seconds: float = 0.5, max_attempts: int = 3,
              infra_retries: int = 5) -> RunOutcome:
    with console.status("discovering checkpoints"):
        plan = plan_sweep(cfg)
    outcome = submit_plan(plan, name=cfg.sweep.name, submitted_by=None, database_url=plan.endpoints.database_url)
    console.print(outcome.summary())
    ends = plan.endpoints
    todo = outcome.new + outcome.already_queued
    report = None
    if todo:
        started = connect(address=ends.ray_address, num_cpus=cfg.cluster.num_cpus, num_gpus=cfg.cluster.num_gpus)
        try:
            with views.progress_bars() as progress:
                bar = progress.add_task(f"sweep {outcome.sweep_id} {cfg.sweep.name}", total=todo, detail="")
                tally = {"failed": 0, "diverged": 0}

                def on_event(ev: JobEvent) -> None:
                    if ev.status not in TERMINAL_STATUSES:
                        return
                    tally[ev.status] = tally.get(ev.status, 0) + 1
                    progress.advance(bar)
                    last = (f"step {ev.step}: λ̂={ev.llc_mean:.3g}" if ev.llc_mean is not None
                            else f"step {ev.step}: {ev.status}")
                    progress.update(bar, detail=f"{last} · failed {tally['failed']} · diverged {tally['diverged']}")

                opts = SchedulerOptions(database_url=ends.database_url, sweep_id=outcome.sweep_id, until_idle=True,
                                        max_in_flight=max_in_flight(requested_in_flight, cfg.sweep.resources.num_cpus),
                                        lease_seconds=lease_seconds, poll_seconds=poll_seconds,
                                        max_attempts=max_attempts, infra_retries=infra_retries)
                report = Scheduler(opts, tracker=tracker, aggregate=False, on_event=on_event).run()
        finally:
            disconnect(started)
        console.print(f"sweep {outcome.sweep_id}: {report.succeeded} succeeded, {report.diverged} diverged, "
                      f"{report.failed} failed")
    with console.status(f"aggregating sweep {outcome.sweep_id}: λ̂ curves, stages, plots"):
        aggregate = aggregate_sweep(sweep_id=outcome.sweep_id, database_url=ends.database_url, tracker=tracker,
                                    storage_uri=ends.storage_uri,
                                    log_to_mlflow=tracker is not None)
    return RunOutcome(sweep_id=outcome.sweep_id, submitted=outcome, scheduler=report, aggregate=aggregate)
