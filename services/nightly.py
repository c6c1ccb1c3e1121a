"""Nightly runs: on a cron schedule, submit the agreed sweeps over whatever checkpoints exist now.

Submission is idempotent through job keys, so each firing writes only the jobs of checkpoints
that appeared since the last one; a run that has no checkpoints yet is reported and skipped so
that it never stops the other watched sweeps.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from croniter import croniter

from services.core.errors import UserError
from services.sweeps.config import config_dir, load_config
from services.sweeps.schema import ScheduleConfig
from services.sweeps.submit import SubmitOutcome, submit_sweep

SUBMITTED_BY = "schedule:nightly"


def next_fire_time(cron: str, after: datetime) -> datetime:
    """The first time strictly after `after` that `cron` fires (in `after`'s timezone)."""
    if not croniter.is_valid(cron):
        raise UserError(f"schedule.cron must be a 5-field cron expression, got {cron!r}.")
    nxt = croniter(cron, after).get_next(datetime)
    assert isinstance(nxt, datetime)
    return nxt


def load_schedule(overrides: Sequence[str] = (), *, conf_dir: Path | None = None) -> ScheduleConfig:
    """The composed `schedule` group, with every watched sweep name checked against conf/sweep."""
    _refuse_sweep_group(overrides)
    schedule = load_config(list(overrides), conf_dir=conf_dir).schedule
    known = sorted(p.stem for p in ((conf_dir or config_dir()) / "sweep").glob("*.yaml"))
    unknown = [name for name in schedule.sweeps if name not in known]
    if unknown:
        raise UserError(f"schedule.sweeps names unknown sweep config(s) {', '.join(unknown)}; "
                        f"available in conf/sweep: {', '.join(known)}.")
    return schedule


def run_nightly_once(overrides: Sequence[str] = (), *, now: datetime | None = None,
                     report: Callable[[str], None] | None = None, conf_dir: Path | None = None,
                     skipped: list[str] | None = None) -> list[SubmitOutcome]:
    """Submit every watched sweep now; a sweep that cannot be submitted (no checkpoints yet, refused)
    is reported, added to `skipped` (its name), and does not stop the others."""
    schedule = load_schedule(overrides, conf_dir=conf_dir)
    say = report or (lambda _line: None)
    when = now or datetime.now(ZoneInfo(schedule.timezone))
    outcomes: list[SubmitOutcome] = []
    for name in schedule.sweeps:
        try:
            cfg = load_config([f"sweep={name}", *overrides], conf_dir=conf_dir)
            outcome = submit_sweep(cfg, submitted_by=SUBMITTED_BY)
        except UserError as exc:
            say(f"{when.isoformat()} nightly: skipped sweep config {name}: {exc}")
            if skipped is not None:
                skipped.append(name)
            continue
        say(f"{when.isoformat()} nightly: {outcome.summary()}")
        outcomes.append(outcome)
    return outcomes


def _refuse_sweep_group(overrides: Sequence[str]) -> None:
    """`sweep=<name>` would clash with the per-sweep selection; schedule.sweeps is the way to choose."""
    for item in overrides:
        if item.lstrip("+~").split("=", 1)[0] == "sweep":
            raise UserError(f"`{item}` picks one sweep; nightly runs the sweeps in schedule.sweeps, "
                            f"e.g. schedule.sweeps=[{item.split('=', 1)[-1]}].")
