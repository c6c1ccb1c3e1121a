"""MLflow logging and aggregation after a result is stored, on one background thread.

The result is already in the store when work lands here, so an MLflow failure is logged
and never loses a result, and a slow tracking server never stalls the scheduling loop.
"""
from __future__ import annotations

import logging
import os
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.aggregator.calibration_plot import plot_calibration
from services.store.jobs import set_job_mlflow_run
from services.store.db import session_scope
from services.tracking import sweep_parent_run

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinishedJob:
    job_id: int
    sweep_id: int
    key: str
    step: int
    hyperparameters: dict[str, Any]
    seed: int
    result: dict[str, Any]
    mlflow_run_id: str | None


def _lower_priority() -> None:
    """Run follow-up work (MLflow HTTP, aggregation) at a lower OS priority than the scheduling
    loop, so on a busy machine the driver thread gets the CPU first (Linux: per-thread nice)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):
        pass


class FollowUp:
    """Serial queue: each job's child run, then (when a sweep's last job is in) its aggregation."""

    def __init__(self, *, database_url: str, tracker: Any | None, aggregate: bool) -> None:
        self._url = database_url
        self._tracker = tracker
        self._aggregate = aggregate
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llc-followup", initializer=_lower_priority)
        self._parents: dict[int, str] = {}
        self.tracking_errors = 0
        self.aggregated: list[int] = []

    def job_done(self, job: FinishedJob) -> None:
        if self._tracker is not None:
            self._submit(self._log_job, job)

    def sweep_done(self, sweep_id: int) -> None:
        if self._aggregate:
            self._submit(self._run_aggregate, sweep_id)

    def drain(self) -> None:
        """Wait for every queued follow-up (call before the scheduler exits)."""
        self._pool.shutdown(wait=True)

    def _submit(self, fn: Any, arg: Any) -> None:
        self._pool.submit(fn, arg)

    def _parent_run(self, sweep_id: int) -> str:
        if sweep_id in self._parents:
            return self._parents[sweep_id]
        run_id = sweep_parent_run(self._tracker, sweep_id=sweep_id, database_url=self._url)
        self._parents[sweep_id] = run_id
        return run_id

    def _log_job(self, job: FinishedJob) -> None:
        try:
            parent = self._parent_run(job.sweep_id)
            params = dict(job.hyperparameters, seed=job.seed)
            with tempfile.TemporaryDirectory() as tmp:
                calibration = (job.result.get("extra") or {}).get("calibration")
                plots = [plot_calibration(calibration, Path(tmp) / "calibration.png", title=f"step {job.step}: ε = auto")
                         ] if isinstance(calibration, dict) else []
                run_id = self._tracker.log_job(parent_run_id=parent, job_key=job.key, step=job.step, params=params,
                                               result=job.result, existing_run_id=job.mlflow_run_id, artifacts=plots)
            with session_scope(self._url) as s:
                set_job_mlflow_run(s, job_id=job.job_id, run_id=run_id)
        except Exception as exc:  # an MLflow failure must never lose or block results
            self.tracking_errors += 1
            log.warning("MLflow logging of job %s failed (%s); its result is stored, re-log it later.",
                        job.job_id, exc)

    def _run_aggregate(self, sweep_id: int) -> None:
        try:
            from services.aggregator import aggregate_sweep

            report = aggregate_sweep(sweep_id=sweep_id, database_url=self._url, tracker=self._tracker,
                                     log_to_mlflow=self._tracker is not None)
            self.aggregated.append(sweep_id)
            if getattr(report, "tracking_error", None):
                log.warning("sweep %s aggregated, but MLflow logging failed: %s", sweep_id, report.tracking_error)
        except Exception as exc:
            log.warning("Aggregating sweep %s failed (%s); run `llc aggregate %s` to retry.", sweep_id, exc, sweep_id)
