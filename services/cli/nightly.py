"""`llc nightly`: submit the watched sweeps now (`--once`) or at every fire time of `schedule.cron`.

Without `--run` the jobs are left pending for a separately running `llc scheduler`; with it,
this process also runs a scheduler until the jobs it just submitted are finished.
"""
from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("nightly", help="on the schedule.cron schedule, submit the watched sweeps' new jobs")
    p.add_argument("overrides", nargs="*",
                   help="Hydra overrides, e.g. schedule.sweeps=[demo,small] schedule.cron='0 3 * * *' store=postgres")
    p.add_argument("--once", action="store_true", help="submit now and exit")
    p.add_argument("--run", action="store_true", help="also run a scheduler here until the submitted jobs finish")
    p.add_argument("--no-tracking", action="store_true", help="with --run: do not log to MLflow")
    p.set_defaults(func=_nightly)


def _nightly(args: argparse.Namespace) -> int:
    from services.nightly import load_schedule, next_fire_time

    schedule = load_schedule(args.overrides)      # refuse a bad config before sleeping
    if args.once:
        return _fire(args)
    zone = ZoneInfo(schedule.timezone)
    while True:
        fire_at = next_fire_time(schedule.cron, datetime.now(zone))
        print(f"nightly: next run at {fire_at.isoformat()} ({schedule.cron}, sweeps {', '.join(schedule.sweeps)})",
              flush=True)
        while (left := (fire_at - datetime.now(zone)).total_seconds()) > 0:
            time.sleep(min(left, 60.0))
        _fire(args)


def _fire(args: argparse.Namespace) -> int:
    """One firing; exit code 1 (with the reasons printed) when a watched sweep could not be
    submitted or a job failed, so a cron monitor does not read success."""
    from services.nightly import run_nightly_once

    skipped: list[str] = []
    outcomes = run_nightly_once(args.overrides, report=lambda line: print(line, flush=True), skipped=skipped)
    failed = 0
    if args.run:
        for outcome in outcomes:
            if outcome.new + outcome.already_queued:
                failed += _run_scheduler(args, sweep_id=outcome.sweep_id)
    if skipped or failed:
        print(f"nightly: not clean: {len(skipped)} sweep config(s) not submitted ({', '.join(skipped) or '-'}), "
              f"{failed} job(s) failed", file=sys.stderr, flush=True)
        return 1
    return 0


def _run_scheduler(args: argparse.Namespace, *, sweep_id: int) -> int:
    """Returns how many jobs failed."""
    """The same Ray driver as `llc scheduler --until-idle`, scoped to one submitted sweep."""
    from services.scheduler.cluster import connect, disconnect
    from services.scheduler.loop import Scheduler, SchedulerOptions
    from services.scheduler.signals import graceful_stop
    from services.sweeps.config import load_config
    from services.core.endpoints import resolve_endpoints
    from services.run import max_in_flight

    cfg = load_config(args.overrides)
    ends = resolve_endpoints(cfg)
    tracker = None
    if not args.no_tracking:
        from services.tracking import Tracker

        tracker = Tracker(ends.tracking_uri)
    started = connect(address=ends.ray_address, num_cpus=cfg.cluster.num_cpus, num_gpus=cfg.cluster.num_gpus)
    try:
        opts = SchedulerOptions(database_url=ends.database_url, sweep_id=sweep_id, until_idle=True,
                                max_in_flight=max_in_flight(None, 1.0), storage_uri=ends.storage_uri)
        scheduler = Scheduler(opts, tracker=tracker)
        with graceful_stop(scheduler.stop):
            report = scheduler.run()
    finally:
        disconnect(started)
    print(f"nightly: sweep {sweep_id}: {report.succeeded} succeeded, {report.diverged} diverged, "
          f"{report.failed} failed", flush=True)
    return report.failed
