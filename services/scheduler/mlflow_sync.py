"""Pay the MLflow outbox (services/store/outbox.py): child runs of stored results, then, once
a sweep has ended, its aggregate and its parent run's final state.

Idempotent: runs are found by tag before one is created, and the store records each run as it
is logged, so a sync killed half-way, a retry after an MLflow outage or two syncers in turn
never make a duplicate. Used by the scheduler's follow-up thread and by `llc sync-mlflow`.
"""
from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.core.calibrations import CALIBRATED
from services.store import outbox
from services.store.db import session_scope
from services.tracking import Tracker, sweep_parent_run

log = logging.getLogger(__name__)

#: how long one syncer holds a sweep (renewed every RENEW_EVERY runs): short, so a syncer killed
#: mid-sweep (kill -9 of its scheduler) blocks the others for at most this long
SYNC_LEASE_S = 30.0
RENEW_EVERY = 10
BATCH = 50


@dataclass
class SyncReport:
    children: int = 0                       # child runs logged (or found) this pass
    ended: dict[int, str] = field(default_factory=dict)     # sweep id → parent run's final status
    aggregated: list[int] = field(default_factory=list)
    busy: list[int] = field(default_factory=list)           # held by another syncer, left to it


def sync_mlflow(*, database_url: str, tracker: Tracker, owner: str, sweep_id: int | None = None,
                aggregate: bool = True, fresh: Mapping[int, dict[str, Any]] | None = None,
                storage_uri: str | None = None) -> SyncReport:
    """One pass over the outbox (or one sweep's part of it). `fresh`: results still in memory
    (job id → full JobResult dict, loss traces included) to log instead of the stored copy.
    Raises on an MLflow failure (the caller retries with backoff); what was logged stays recorded."""
    report = SyncReport()
    with session_scope(database_url) as s:
        sweeps = outbox.owed_sweeps(s, sweep_id=sweep_id)
    for sid in sweeps:
        with session_scope(database_url) as s:
            if not outbox.take_sync_lease(s, sweep_id=sid, owner=owner, seconds=SYNC_LEASE_S):
                report.busy.append(sid)
                continue
        try:
            _sync_sweep(sid, database_url=database_url, tracker=tracker, owner=owner, aggregate=aggregate,
                        fresh=fresh or {}, report=report, storage_uri=storage_uri)
        finally:
            with session_scope(database_url) as s:
                outbox.release_sync_lease(s, sweep_id=sid, owner=owner)
    return report


def _log_child(tracker: Tracker, *, parent: str, run: Any, result: Mapping[str, Any], sweep_id: int) -> str:
    """One child run; an epsilon=auto (gamma=auto) job's calibration goes with it as a PNG (λ̂ against ε (γ), pick marked)."""
    extra = (result or {}).get("extra") or {}
    # Imported here: the aggregator package pulls in torch, seconds a restarted scheduler would
    # otherwise spend before it claims anything.
    from services.aggregator.calibration_plot import plot_calibration

    with tempfile.TemporaryDirectory() as tmp:
        plots = [plot_calibration(extra[c.record], Path(tmp) / f"{c.record}.png", title=f"step {run.step}: {c.symbol} = auto",
                                  x=c.name)
                 for c in CALIBRATED if isinstance(extra.get(c.record), dict)]
        return tracker.log_job(parent_run_id=parent, job_key=run.key, step=run.step,
                               params=dict(run.hyperparameters, seed=run.seed), result=result, sweep_id=sweep_id,
                               artifacts=plots)


def _sync_sweep(sweep_id: int, *, database_url: str, tracker: Tracker, owner: str, aggregate: bool,
                fresh: Mapping[int, dict[str, Any]], report: SyncReport, storage_uri: str | None) -> None:
    parent = sweep_parent_run(tracker, sweep_id=sweep_id, database_url=database_url)
    while True:
        with session_scope(database_url) as s:
            owed = outbox.owed_runs(s, sweep_id=sweep_id, limit=BATCH)
            outbox.take_sync_lease(s, sweep_id=sweep_id, owner=owner, seconds=SYNC_LEASE_S)
        if not owed:
            break
        logged: dict[int, str] = {}
        try:
            for i, run in enumerate(owed):
                if i and i % RENEW_EVERY == 0:
                    with session_scope(database_url) as s:
                        outbox.take_sync_lease(s, sweep_id=sweep_id, owner=owner, seconds=SYNC_LEASE_S)
                result = fresh.get(run.job_id, run.result)
                logged[run.job_id] = _log_child(tracker, parent=parent, run=run, result=result, sweep_id=sweep_id)
        finally:
            if logged:
                with session_scope(database_url) as s:
                    outbox.set_child_runs(s, sweep_id=sweep_id, runs=logged)
                report.children += len(logged)
    with session_scope(database_url) as s:
        final = outbox.final_run_status(s, sweep_id=sweep_id)
    if final is None:
        return                                  # still running: its end is owed later
    if final != "KILLED" and aggregate:
        from services.aggregator import aggregate_sweep

        agg = aggregate_sweep(sweep_id=sweep_id, database_url=database_url, tracker=tracker, log_to_mlflow=True,
                              storage_uri=storage_uri)
        if getattr(agg, "tracking_error", None):
            raise RuntimeError(f"the aggregate run of sweep {sweep_id} could not be logged: {agg.tracking_error}")
        report.aggregated.append(sweep_id)
    tracker.end_run(parent, status=final)
    with session_scope(database_url) as s:
        outbox.mark_synced(s, sweep_id=sweep_id)
    report.ended[sweep_id] = final
