"""MLflow logging and aggregation after a result is stored, on one background thread.

What MLflow is owed lives in the store (the outbox, services/store/outbox.py), not in this
thread's memory: the thread pays it (child runs, then an ended sweep's aggregate and parent
state) whenever results arrive and every POLL_S, retrying with backoff while MLflow is away.
A killed scheduler or an MLflow outage loses nothing: the next syncer (or `llc sync-mlflow`)
pays what is left. A slow tracking server never stalls the scheduling loop.
"""
from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import Any

from services.scheduler.mlflow_sync import sync_mlflow

log = logging.getLogger(__name__)

#: how often the outbox is looked at without news (sweeps finished elsewhere, e.g. nightly)
POLL_S = 10.0
#: backoff while MLflow (or the store) is failing: doubles from BACKOFF_S up to MAX_BACKOFF_S
BACKOFF_S = 1.0
MAX_BACKOFF_S = 60.0
#: full results kept in memory for their child run (loss traces); the store's copy otherwise
FRESH_LIMIT = 2000


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
    """Pays the MLflow outbox in the background; without a tracker, only aggregates ended sweeps."""

    def __init__(self, *, database_url: str, tracker: Any | None, aggregate: bool, owner: str = "followup",
                 sweep_id: int | None = None, storage_uri: str | None = None) -> None:
        self._url = database_url
        self._storage = storage_uri
        self._tracker = tracker
        self._aggregate = aggregate
        self._owner = owner
        self._sweep_id = sweep_id
        self._fresh: dict[int, dict[str, Any]] = {}
        self._ended: list[int] = []          # without a tracker: sweeps to aggregate
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.tracking_errors = 0
        self.aggregated: list[int] = []
        self.children_logged = 0
        self._thread = threading.Thread(target=self._run, name="llc-followup", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def job_done(self, job: FinishedJob) -> None:
        if self._tracker is not None:
            with self._lock:
                if len(self._fresh) < FRESH_LIMIT:
                    self._fresh[job.job_id] = job.result
            self._wake.set()

    def sweep_done(self, sweep_id: int) -> None:
        if self._tracker is None and self._aggregate:
            with self._lock:
                self._ended.append(sweep_id)
        self._wake.set()

    def drain(self) -> None:
        """One last pass, then stop (before the scheduler exits); what MLflow could not take
        now stays owed in the store."""
        if not self._thread.is_alive():
            return
        self._stop.set()
        self._wake.set()
        self._thread.join()

    def _run(self) -> None:
        _lower_priority()
        delay = BACKOFF_S
        while True:
            self._wake.wait(POLL_S)
            self._wake.clear()
            stopping = self._stop.is_set()
            ok = self._pass()
            if stopping:
                if not ok:
                    log.warning("MLflow is still owed runs; the next scheduler or `llc sync-mlflow` logs them")
                return
            if ok:
                delay = BACKOFF_S
            else:
                self._stop.wait(delay)               # back off, unless asked to stop
                delay = min(MAX_BACKOFF_S, delay * 2)

    def _pass(self) -> bool:
        """Aggregate (no tracker) or sync the outbox once; False when it failed and should be retried."""
        if self._tracker is None:
            with self._lock:
                ended, self._ended = self._ended, []
            for sweep_id in ended:
                self._aggregate_only(sweep_id)
            return True
        with self._lock:
            fresh = dict(self._fresh)
        try:
            report = sync_mlflow(database_url=self._url, tracker=self._tracker, owner=self._owner,
                                 sweep_id=self._sweep_id, aggregate=self._aggregate, fresh=fresh,
                                 storage_uri=self._storage)
        except Exception as exc:  # MLflow or the store away: the outbox keeps it, retry later
            self.tracking_errors += 1
            log.warning("MLflow follow-up failed (%s); results are stored and stay owed to MLflow, retrying", exc)
            return False
        with self._lock:
            for job_id in fresh:
                self._fresh.pop(job_id, None)
        self.children_logged += report.children
        self.aggregated.extend(report.aggregated)
        return True

    def _aggregate_only(self, sweep_id: int) -> None:
        try:
            from services.aggregator import aggregate_sweep

            aggregate_sweep(sweep_id=sweep_id, database_url=self._url, tracker=None, log_to_mlflow=False,
                            storage_uri=self._storage)
            self.aggregated.append(sweep_id)
        except Exception as exc:
            log.warning("Aggregating sweep %s failed (%s); run `llc aggregate %s` to retry.", sweep_id, exc, sweep_id)
