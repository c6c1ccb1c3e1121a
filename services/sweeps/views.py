"""Rich views of sweeps for `llc status`: counts by state, λ̂ so far, failures with reasons."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from rich.console import Group
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text
from sqlalchemy.orm import Session

from services.core.labels import setting_label, varying_keys
from services.core.status import ACTIVE_STATUSES, DONE_STATUSES, JOB_STATES, JobStatus
from services.store import results as store_results
from services.store import sweeps as store_sweeps

STATES: tuple[str, ...] = tuple(str(s) for s in JOB_STATES)


def sweeps_table(sweeps: list[Any], counts: dict[int, dict[str, int]]) -> Table:
    table = Table(title="sweeps")
    for col in ("id", "name", "status", "submitted", *STATES):
        table.add_column(col, justify="right" if col in STATES or col == "id" else "left")
    for sw in sweeps:
        c = counts[sw.id]
        table.add_row(str(sw.id), sw.name, sw.status, sw.created_at.strftime("%Y-%m-%d %H:%M"),
                      *[str(c.get(s, 0)) for s in STATES])
    return table


#: a heartbeat older than this: the scheduler died, or it cannot reach the store (an outage)
STALE_HEARTBEAT_S = 150.0


def schedulers_table(schedulers: list[Any], now: datetime) -> Table | Text:
    """Live schedulers: state, jobs in flight, last heartbeat (a stale one is flagged)."""
    if not schedulers:
        return Text("no scheduler is running (start one with `llc scheduler`)")
    table = Table(title="schedulers")
    for col in ("scheduler", "state", "in flight", "last seen", "detail"):
        table.add_column(col, justify="right" if col == "in flight" else "left")
    for sc in schedulers:
        age = (now - sc.heartbeat_at).total_seconds()
        state = sc.state if age <= STALE_HEARTBEAT_S else f"silent {age:.0f} s: dead, or cut off from the store"
        table.add_row(sc.owner, state, str(sc.in_flight), f"{age:.0f} s ago", sc.detail or "")
    return table


@dataclass(frozen=True)
class SweepDetail:
    """What `llc status SWEEP` shows, read in bounded queries: the latest steps' results only, the
    first failures and the distinct waiting notes, so a 100k-job sweep reads as fast as a small one."""

    sweep: Any
    counts: dict[str, int]
    done: list[Any]                    # results at the latest `shown_steps` steps that have any
    steps_with_results: int
    failures: list[Any]                # the first failed jobs (their count is in `counts`)
    waiting: list[str] = field(default_factory=list)


#: `llc status SWEEP` shows λ̂ at this many of the latest steps with results, and this many failures
STATUS_STEPS = 12
STATUS_FAILURES = 20


def read_detail(session: Session, *, sweep_id: int, steps: int = STATUS_STEPS,
                failures: int = STATUS_FAILURES) -> SweepDetail:
    """The sweep's detail in five bounded queries."""
    latest = store_results.latest_result_steps(session, sweep_id=sweep_id, count=steps)
    return SweepDetail(
        sweep=store_sweeps.get_sweep(session, sweep_id=sweep_id),
        counts=store_sweeps.sweep_counts(session, sweep_id=sweep_id),
        done=store_results.sweep_results(session, sweep_id=sweep_id, steps=latest, statuses=DONE_STATUSES),
        steps_with_results=store_results.result_step_count(session, sweep_id=sweep_id),
        failures=store_results.sweep_results(session, sweep_id=sweep_id, statuses=[JobStatus.FAILED], limit=failures),
        waiting=store_results.waiting_notes(session, sweep_id=sweep_id, statuses=ACTIVE_STATUSES))


def sweep_detail(detail: SweepDetail, *, max_settings: int = 6) -> Group:
    sweep, counts, done = detail.sweep, detail.counts, detail.done
    head = Table(title=f"sweep {sweep.id} · {sweep.name} · {sweep.status}")
    for s in STATES:
        head.add_column(s, justify="right")
    head.add_row(*[str(counts.get(s, 0)) for s in STATES])
    parts: list[Any] = [head]

    if done:
        shown = varying_keys([r.hyperparameters for r in done])
        by_setting: dict[str, dict[int, list[Any]]] = defaultdict(lambda: defaultdict(list))
        for r in done:
            by_setting[setting_label(r.hyperparameters, shown)][r.step].append(r)
        settings = sorted(by_setting)[:max_settings]
        steps = sorted({r.step for r in done})
        more = detail.steps_with_results - len(steps)
        title = "λ̂ so far" + (f" (latest {len(steps)} of {detail.steps_with_results} steps)" if more > 0 else "")
        more_settings = len(by_setting) - len(settings)
        caption = "mean ± std over chains; * diverged" + (f"; {more_settings} more setting(s) not shown"
                                                          if more_settings > 0 else "")
        llc = Table(title=title, caption=caption)
        llc.add_column("step", justify="right")
        for name in settings:
            llc.add_column(name, justify="right")
        for step in steps:
            cells = []
            for name in settings:
                found = by_setting[name].get(step, [])
                cells.append(", ".join(_cell(r) for r in found) or "·")
            llc.add_row(str(step), *cells)
        parts.append(llc)
    if detail.waiting:
        # A scheduler's note on jobs no node can run (services/scheduler/feasibility.py), or a requeue reason.
        parts.append(Group(*[Text(f"waiting: {note}", style="yellow") for note in detail.waiting]))
    if detail.failures:
        total = counts.get(str(JobStatus.FAILED), len(detail.failures))
        fail = Table(title=f"failures ({total}" + (f", first {len(detail.failures)} shown)"
                                                   if total > len(detail.failures) else ")"))
        fail.add_column("job", justify="right")
        fail.add_column("step", justify="right")
        fail.add_column("reason")
        for r in detail.failures:
            fail.add_row(str(r.job_id), str(r.step), r.error or "")
        parts.append(fail)
    return Group(*parts)


def _cell(r: Any) -> str:
    if r.llc_mean is None:
        return "nan*" if r.diverged else "?"
    text = f"{r.llc_mean:.3g}" + (f"±{r.llc_std:.2g}" if r.llc_std is not None else "")
    return text + ("*" if r.status == JobStatus.DIVERGED else "")


def progress_bars() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[detail]}"), TimeElapsedColumn())
