"""`llc submit`, `llc scheduler`, `llc status`, `llc cancel`, `llc run`: sweeps end to end.

Every command takes Hydra overrides (`store=postgres`, `sweep=demo`, `sampler.epsilon=[...]`);
endpoints come from the tools' own variables when set (LLC_DATABASE_URL, AWS_ENDPOINT_URL_S3,
MLFLOW_TRACKING_URI, RAY_ADDRESS), else the embedded default.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Any

from services.core.endpoints import Endpoints, resolve_endpoints
from services.core.errors import UserError
from services.core.status import ACTIVE_SWEEP_STATUSES, TERMINAL_STATUSES



def register(subparsers: Any) -> None:
    ov_help = "Hydra overrides, e.g. sweep=demo sampler.epsilon=[1e-4,3e-4] store=postgres"

    submit = subparsers.add_parser("submit", help="resolve a sweep config and write its jobs to the store")
    submit.add_argument("overrides", nargs="*", help=ov_help)
    submit.add_argument("--dry-run", action="store_true", help="show the plan, write nothing")
    submit.set_defaults(func=_submit)

    sched = subparsers.add_parser("scheduler", help="the long-running Ray driver: runs pending jobs")
    sched.add_argument("overrides", nargs="*", help=ov_help)
    mode = sched.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_true", help="claim one batch, finish it, exit")
    mode.add_argument("--until-idle", action="store_true", help="exit when nothing is pending or running")
    _scheduler_options(sched)
    sched.add_argument("--sweep", type=int, default=None, metavar="ID", help="run only this sweep's jobs")
    sched.add_argument("-v", "--verbose", action="store_true")
    sched.set_defaults(func=_scheduler)

    status = subparsers.add_parser("status", help="counts by state, λ̂ so far and failures of a sweep (or all)")
    status.add_argument("sweep", nargs="?", default=None, metavar="SWEEP")
    status.add_argument("overrides", nargs="*", help=ov_help)
    status.add_argument("--watch", action="store_true", help="progress bars until the sweep(s) finish")
    status.add_argument("--interval", type=float, default=2.0, help=argparse.SUPPRESS)
    status.set_defaults(func=_status)

    cancel = subparsers.add_parser("cancel", help="cancel a sweep's pending and running jobs")
    cancel.add_argument("sweep", type=int, metavar="SWEEP")
    cancel.add_argument("overrides", nargs="*", help=ov_help)
    cancel.set_defaults(func=_cancel)

    run = subparsers.add_parser("run", help="submit a sweep and run it here until it finishes (one machine)")
    run.add_argument("overrides", nargs="*", help=ov_help)
    _scheduler_options(run)
    run.add_argument("-v", "--verbose", action="store_true")
    run.set_defaults(func=_run)


def _scheduler_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-in-flight", type=int, default=None, metavar="N",
                   help="Ray tasks in flight at once (default: the cluster's CPUs / the sweep's CPUs per job)")
    p.add_argument("--lease-seconds", type=float, default=120.0, metavar="S", help="job lease length (renewed every S/3)")
    p.add_argument("--poll-seconds", type=float, default=0.5, help=argparse.SUPPRESS)
    p.add_argument("--max-attempts", type=int, default=3, help="claims per job before it is failed (input faults, "
                   "expired leases)")
    p.add_argument("--infra-retries", type=int, default=5, metavar="N",
                   help="retries with backoff of a job hit by infrastructure faults (lost worker, OOM, S3 away, full "
                        "disk); they do not use up --max-attempts")
    p.add_argument("--outage-budget", type=float, default=600.0, metavar="S",
                   help="how long an unreachable store is waited out (Ray tasks keep running, fetched results are "
                        "spooled to $LLC_HOME/spool) before the scheduler gives up with exit code 3")
    p.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")


# ---------------------------------------------------------------- helpers

def _config(overrides: list[str]) -> Any:
    from services.sweeps.config import load_config

    return load_config(overrides)


def _endpoints(overrides: list[str]) -> Endpoints:
    """Without overrides the composed config adds nothing to the variables: skip composing it."""
    return resolve_endpoints(_config(overrides) if overrides else None)


def _logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def _tracker(uri: str, disabled: bool) -> Any:
    if disabled:
        return None
    from services.tracking import Tracker

    return Tracker(uri)


def _max_in_flight(requested: int | None, num_cpus_per_job: float) -> int:
    from services.run import max_in_flight

    return max_in_flight(requested, num_cpus_per_job)


# ---------------------------------------------------------------- commands

def _submit(args: argparse.Namespace) -> int:
    from rich.console import Console

    from services.sweeps.submit import plan_sweep, submit_plan

    cfg = _config(args.overrides)
    console = Console()
    with console.status("discovering checkpoints"):
        plan = plan_sweep(cfg)
    for reason in plan.skipped:
        console.print(f"[yellow]skipped:[/] {reason}")
    if args.dry_run:
        console.print(f"plan: {len(plan.jobs)} jobs over {len(plan.checkpoints)} checkpoints of {plan.run_uri} "
                      f"(steps {[c.step for c in plan.checkpoints]}); nothing written")
        return 0
    outcome = submit_plan(plan, name=cfg.sweep.name, submitted_by=None, database_url=plan.endpoints.database_url)
    console.print(outcome.summary())
    print(f"sweep_id={outcome.sweep_id} new={outcome.new} already_done={outcome.already_done} "
          f"already_queued={outcome.already_queued}")
    if outcome.new == 0 and outcome.already_queued == 0:
        console.print(f"every job is already done; `llc aggregate {outcome.sweep_id}` builds its curves")
    return 0


def _scheduler(args: argparse.Namespace) -> int:
    import dataclasses

    from services.scheduler.cluster import connect, disconnect
    from services.scheduler.loop import Scheduler, SchedulerOptions
    from services.scheduler.outage import StoreOutage
    from services.scheduler.signals import graceful_stop

    _logging(args.verbose)
    cfg = _config(args.overrides)
    ends = resolve_endpoints(cfg)
    # Every option is checked before Ray starts (a bad one is one sentence, not a traceback later).
    opts = SchedulerOptions(database_url=ends.database_url, max_in_flight=args.max_in_flight or 1,
                            lease_seconds=args.lease_seconds, poll_seconds=args.poll_seconds, sweep_id=args.sweep,
                            until_idle=args.until_idle, once=args.once, max_attempts=args.max_attempts,
                            infra_retries=args.infra_retries, storage_uri=ends.storage_uri,
                            outage_budget_s=args.outage_budget)
    started = connect(address=ends.ray_address, num_cpus=cfg.cluster.num_cpus, num_gpus=cfg.cluster.num_gpus)
    try:
        opts = dataclasses.replace(opts, max_in_flight=_max_in_flight(args.max_in_flight, 1.0))
        scheduler = Scheduler(opts, tracker=_tracker(ends.tracking_uri, args.no_tracking))
        with graceful_stop(scheduler.stop) as received:
            try:
                report = scheduler.run()
            except StoreOutage as exc:
                print(f"llc: error: {exc}", file=sys.stderr)
                print(scheduler.report.summary(), flush=True)
                return 3
        report.stopped_by = received[0] if received else None
    finally:
        disconnect(started)
    print(report.summary(), flush=True)
    return report.exit_code()


def split_sweep_arg(args: argparse.Namespace) -> tuple[int | None, list[str]]:
    overrides = list(args.overrides)
    sweep = args.sweep
    if isinstance(sweep, str) and "=" in sweep:
        overrides.insert(0, sweep)
        sweep = None
    if sweep is not None:
        try:
            sweep = int(sweep)
        except ValueError:
            raise UserError(f"SWEEP must be a sweep id (an integer), got {sweep!r}; run `llc status` to list them.") from None
    return sweep, overrides


def _status(args: argparse.Namespace) -> int:
    from rich.console import Console

    from services.store import schedulers as store_schedulers
    from services.store import sweeps as store_sweeps
    from services.store.db import check_schema, session_scope
    from services.store.models import utcnow
    from services.sweeps import views

    sweep_id, overrides = split_sweep_arg(args)
    url = _endpoints(overrides).database_url
    check_schema(url)
    console = Console()
    if args.watch:
        return _watch(url, sweep_id, args.interval, console)
    with session_scope(url) as s:
        if sweep_id is None:
            sweeps = store_sweeps.list_sweeps(s)
            if not sweeps:
                console.print("no sweeps yet; submit one with `llc submit sweep=demo`")
                return 0
            counts = store_sweeps.all_sweep_counts(s, sweep_ids=[sw.id for sw in sweeps])
            console.print(views.sweeps_table(sweeps, counts))
            console.print(views.schedulers_table(store_schedulers.list_schedulers(s), utcnow()))
            return 0
        console.print(views.sweep_detail(views.read_detail(s, sweep_id=sweep_id)))
    return 0


def _watch(url: str, sweep_id: int | None, interval: float, console: Any) -> int:
    from services.store import sweeps as store_sweeps
    from services.store.db import session_scope
    from services.sweeps import views

    bars: dict[int, Any] = {}
    with views.progress_bars() as progress:
        while True:
            with session_scope(url) as s:
                sweeps = [store_sweeps.get_sweep(s, sweep_id=sweep_id)] if sweep_id is not None else [
                    sw for sw in store_sweeps.list_sweeps(s) if sw.status in ACTIVE_SWEEP_STATUSES]
                active = 0
                for sw in sweeps:
                    c = store_sweeps.sweep_counts(s, sweep_id=sw.id)
                    total = sum(c.values())
                    done = sum(c[k] for k in TERMINAL_STATUSES)
                    detail = f"running {c['running']} · failed {c['failed']} · diverged {c['diverged']}"
                    if sw.id not in bars:
                        bars[sw.id] = progress.add_task(f"sweep {sw.id} {sw.name}", total=total, detail=detail)
                    progress.update(bars[sw.id], completed=done, total=total, detail=detail)
                    active += sw.status in ACTIVE_SWEEP_STATUSES
            if not active:
                return 0
            time.sleep(interval)


def _cancel(args: argparse.Namespace) -> int:
    from services.store.db import check_schema, session_scope
    from services.store.sweeps import cancel_sweep

    url = _endpoints(args.overrides).database_url
    check_schema(url)
    with session_scope(url) as s:
        ids = cancel_sweep(s, sweep_id=args.sweep)
    print(f"sweep {args.sweep} cancelled: {len(ids)} pending/running job(s) cancelled "
          "(schedulers cancel the running Ray tasks within a second)")
    return 0


def _run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from services.cli.aggregate import print_report
    from services.run import run_sweep
    from services.scheduler.loop import SchedulerOptions

    _logging(args.verbose)
    cfg = _config(args.overrides)
    ends = resolve_endpoints(cfg)
    SchedulerOptions(database_url=ends.database_url, max_in_flight=args.max_in_flight or 1,  # refuse bad options now
                     lease_seconds=args.lease_seconds, poll_seconds=args.poll_seconds, max_attempts=args.max_attempts,
                     infra_retries=args.infra_retries)
    outcome = run_sweep(cfg, console=Console(), tracker=_tracker(ends.tracking_uri, args.no_tracking),
                        requested_in_flight=args.max_in_flight, lease_seconds=args.lease_seconds,
                        poll_seconds=args.poll_seconds, max_attempts=args.max_attempts,
                        infra_retries=args.infra_retries)
    if outcome.aggregate is not None:
        print_report(outcome.aggregate)
    failed = outcome.scheduler.failed if outcome.scheduler is not None else 0
    return 0 if failed == 0 else 1

