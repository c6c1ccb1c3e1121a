"""MLflow tracking: an experiment per sweep name, a parent run per sweep, a child run per job,
an aggregate run per sweep.

Everything goes through one `MlflowClient` per `Tracker` (never the fluent global "active
run" state), so several sweeps and threads can log at once. Runs are found again by tags
(`llc.sweep_id`, `llc.job_key`, `llc.kind`), so a restarted scheduler or a re-aggregation
reuses or replaces runs instead of piling up duplicates.
"""
from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlparse

from services.core.calibrations import CALIBRATED, Calibrated
from services.core.numbers import chunks, finite_or_none
from services.core.paths import llc_home
from services.store.db import session_scope
from services.store.sweeps import get_sweep, set_sweep_mlflow_run

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

    from workers.job import JobResult

# MLflow's own defaults retry a dead server for minutes (7 retries, backoff factor 2);
# a sweep should learn within seconds that its tracking server is unreachable.
_HTTP_ENV_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
    # One "View run ... at" line per finished job would bury the sweep's progress bar.
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}

MAX_BATCH_ITEMS = 1000   # MLflow's log_batch limit (metrics + params + tags)
MAX_BATCH_PARAMS = 100   # MLflow's log_batch limit for params

TAG_SWEEP_ID = "llc.sweep_id"
TAG_KIND = "llc.kind"
TAG_JOB_KEY = "llc.job_key"
TAG_TRAINING_RUN = "llc.training_run"
TAG_PARENT = "mlflow.parentRunId"

T = TypeVar("T")


class TrackingUnavailable(RuntimeError):
    """The tracking server cannot be reached: one sentence naming the URI and the fix."""


def metric_name(text: str) -> str:
    """A string MLflow accepts as a metric/param key (alphanumerics, _ - . / and space)."""
    cleaned = re.sub(r"[^A-Za-z0-9_\-./ ]+", "_", text).strip("_")
    return cleaned or "_"


def _is_connection_error(exc: BaseException) -> bool:
    import requests

    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, (requests.exceptions.ConnectionError, requests.exceptions.Timeout, ConnectionError)):
            return True
        cur = cur.__cause__ or cur.__context__
    text = str(exc)
    return "Max retries exceeded" in text or "Failed to establish a new connection" in text


def _as_mapping(result: Any) -> dict[str, Any]:
    """A JobResult (dataclass with to_dict) or an already JSON-shaped dict."""
    if isinstance(result, Mapping):
        return dict(result)
    to_dict = getattr(result, "to_dict", None)
    if callable(to_dict):
        return dict(to_dict())
    if is_dataclass(result) and not isinstance(result, type):
        return asdict(result)
    raise TypeError(f"expected a JobResult or a dict, got {type(result).__name__}")


def _finite(value: Any) -> float | None:
    """A metric value: bools as 0/1 (flags in diagnostics), numbers when finite, else None."""
    return float(value) if isinstance(value, bool) else finite_or_none(value)


def _calibration_metrics(calibration: dict[str, Any], now: int, kind: Calibrated) -> list[Any]:
    """One MLflow step per pilot, down the grid: the pilot's epsilon (or gamma), lambda_hat, its s.e., usable."""
    from mlflow.entities import Metric

    out: list[Any] = []
    for i, point in enumerate(calibration.get("points") or []):
        for key in kind.pilot_metrics:
            if (v := _finite(point.get(key))) is not None:
                out.append(Metric(f"{kind.record}/{key}", v, now, i))
        out.append(Metric(f"{kind.record}/usable", float(bool(point.get("usable"))), now, i))
    return out



class Tracker:
    """MLflow logging for sweeps; safe to share between threads (one client, no global run)."""

    def __init__(self, tracking_uri: str) -> None:
        for name, value in _HTTP_ENV_DEFAULTS.items():
            os.environ.setdefault(name, value)
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        self.tracking_uri = tracking_uri
        self._local = urlparse(self.tracking_uri).scheme in ("sqlite", "file", "")
        if self.tracking_uri.startswith("sqlite:///"):
            Path(self.tracking_uri[len("sqlite:///"):]).expanduser().parent.mkdir(parents=True, exist_ok=True)
        self._client_obj: MlflowClient | None = None

    # -- plumbing ---------------------------------------------------------------------------

    @property
    def client(self) -> MlflowClient:
        if self._client_obj is None:
            from mlflow.tracking import MlflowClient

            self._client_obj = self._call(lambda: MlflowClient(tracking_uri=self.tracking_uri))
        return self._client_obj

    def _call(self, fn: Callable[[], T]) -> T:
        """Run one MLflow call, turning 'server unreachable' into TrackingUnavailable."""
        try:
            return fn()
        except Exception as exc:
            if _is_connection_error(exc):
                raise TrackingUnavailable(
                    f"The MLflow tracking server at {self.tracking_uri} cannot be reached; start it or point "
                    f"MLFLOW_TRACKING_URI at a running server (unset it to use the embedded local store)."
                ) from exc
            raise

    def _artifact_location(self, experiment_name: str) -> str | None:
        """Embedded stores keep artifacts under $LLC_HOME/mlartifacts, not the current directory."""
        if not self._local:
            return None  # the server decides (e.g. --artifacts-destination)
        return (llc_home() / "mlartifacts" / metric_name(experiment_name).replace(" ", "_")).as_uri()

    def experiment_id(self, name: str) -> str:
        """The experiment named `name`, created if missing (tolerates a concurrent creator)."""
        from mlflow.exceptions import MlflowException

        exp = self._call(lambda: self.client.get_experiment_by_name(name))
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                self._call(lambda: self.client.restore_experiment(exp.experiment_id))
            return str(exp.experiment_id)
        try:
            return str(self._call(lambda: self.client.create_experiment(
                name, artifact_location=self._artifact_location(name))))
        except MlflowException:
            exp = self._call(lambda: self.client.get_experiment_by_name(name))
            if exp is None:
                raise
            return str(exp.experiment_id)

    def _live_run(self, run_id: str | None) -> Run | None:
        """The run with this id if it exists and is not deleted."""
        from mlflow.exceptions import MlflowException

        if not run_id:
            return None
        try:
            run = self._call(lambda: self.client.get_run(run_id))
        except MlflowException:
            return None
        return run if run.info.lifecycle_stage == "active" else None

    def _find_runs(self, experiment_id: str, filter_string: str) -> list[Run]:
        return list(self._call(lambda: self.client.search_runs(
            [experiment_id], filter_string=filter_string, max_results=100, order_by=["attributes.start_time DESC"])))

    def _log_batch(self, run_id: str, *, metrics: Sequence[Any] = (), params: Sequence[Any] = (),
                   tags: Sequence[Any] = ()) -> None:
        for chunk in chunks(list(params), MAX_BATCH_PARAMS):
            self._call(lambda c=chunk: self.client.log_batch(run_id, params=c, synchronous=True))
        for chunk in chunks(list(tags), MAX_BATCH_ITEMS):
            self._call(lambda c=chunk: self.client.log_batch(run_id, tags=c, synchronous=True))
        for chunk in chunks(list(metrics), MAX_BATCH_ITEMS):
            self._call(lambda c=chunk: self.client.log_batch(run_id, metrics=c, synchronous=True))

    # -- the contract -----------------------------------------------------------------------

    def sweep_run(self, *, sweep_id: int, sweep_name: str, training_run: str, config: dict,
                  existing_run_id: str | None = None) -> str:
        """The sweep's parent run: reused when `existing_run_id` (or a run tagged with the
        sweep id) is still there, else created with the resolved config as an artifact."""
        run = self._live_run(existing_run_id)
        if run is not None:
            return run.info.run_id
        exp_id = self.experiment_id(sweep_name)
        found = self._find_runs(exp_id, f"tags.`{TAG_SWEEP_ID}` = '{sweep_id}' and tags.`{TAG_KIND}` = 'sweep'")
        if found:
            return found[0].info.run_id
        run = self._call(lambda: self.client.create_run(exp_id, run_name=f"{sweep_name}-sweep{sweep_id}", tags={
            TAG_SWEEP_ID: str(sweep_id), TAG_KIND: "sweep", TAG_TRAINING_RUN: training_run}))
        run_id = run.info.run_id
        self._call(lambda: self.client.log_dict(run_id, config, "config.json"))
        return run_id

    def log_job(self, *, parent_run_id: str, job_key: str, step: int, params: dict, result: JobResult | dict,
                existing_run_id: str | None = None, artifacts: Sequence[Path] = (),
                sweep_id: int | None = None) -> str:
        """One job's child run (per sweep when `sweep_id` is given: a job shared by several sweeps
        gets a child under each, tagged with that sweep's id). Found by tag before one is created,
        so a retry never duplicates: a finished run is kept untouched (same key = same result);
        a half-logged run (an earlier try cut off by an outage or a kill) is deleted and logged
        afresh, so each job key has exactly one live child run. An epsilon=auto calibration is
        logged as calibration/* metrics (one step per pilot), the pick as a param and the whole
        record as calibration.json (gamma=auto: gamma_calibration/*, calibration.gamma,
        gamma_calibration.json); `artifacts` (e.g. their plots) are attached as files."""
        from mlflow.entities import Metric, Param, RunTag

        existing = self._live_run(existing_run_id)
        parent = self._call(lambda: self.client.get_run(parent_run_id))
        exp_id = parent.info.experiment_id
        matches: list[Run] = []
        if existing is None:
            where = f"tags.`{TAG_JOB_KEY}` = '{job_key}'"
            if sweep_id is not None:
                where += f" and tags.`{TAG_SWEEP_ID}` = '{sweep_id}'"
            matches = self._find_runs(exp_id, where)
            finished = [r for r in matches if r.info.status == "FINISHED"]
            existing = finished[0] if finished else (matches[0] if matches else None)
        if existing is not None and existing.info.status == "FINISHED":
            return existing.info.run_id
        stale = {r.info.run_id for r in matches} | ({existing.info.run_id} if existing is not None else set())
        for run_id in sorted(stale):
            self._call(lambda run_id=run_id: self.client.delete_run(run_id))

        data = _as_mapping(result)
        run_tags = {TAG_PARENT: parent_run_id, TAG_JOB_KEY: job_key, TAG_KIND: "job"}
        if sweep_id is not None:
            run_tags[TAG_SWEEP_ID] = str(sweep_id)
        run = self._call(lambda: self.client.create_run(exp_id, run_name=f"step{step}-{job_key[:8]}", tags=run_tags))
        run_id = run.info.run_id
        now = int(time.time() * 1000)

        flat_params = {"checkpoint_step": step, **params}
        param_objs = [Param(metric_name(str(k)), str(v)[:6000]) for k, v in sorted(flat_params.items())]
        tags = [RunTag(f"llc.{k}", str(data[k])) for k in ("device", "host", "ray_node_id", "estimator_version")
                if data.get(k) is not None]
        # How the estimate ran, in words: the chain path, why not vectorized, baseline method, compile.
        extra = data.get("extra") or {}
        how = {"path": extra.get("path"), "fallback_reason": extra.get("fallback_reason"),
               **{f"note.{k}": v for k, v in (extra.get("notes") or {}).items()}}
        tags += [RunTag(f"llc.{k}", str(v)[:5000]) for k, v in how.items() if v]

        metrics: list[Any] = []
        for key in ("llc_mean", "llc_std", "init_loss", "loss_wstar", "baseline_loss", "nbeta", "n", "wall_time_s"):
            value = _finite(data.get(key))
            if value is not None:
                metrics.append(Metric(key, value, now, 0))
        diverged = data.get("diverged")
        if diverged is not None:
            metrics.append(Metric("diverged", float(bool(diverged)), now, 0))
        for i, value in enumerate(data.get("llc_per_chain") or []):
            if (v := _finite(value)) is not None:
                metrics.append(Metric(f"llc_chain/{i}", v, now, 0))
        for key, value in sorted((data.get("diagnostics") or {}).items()):
            if (v := _finite(value)) is not None:
                metrics.append(Metric(metric_name(f"diag/{key}"), v, now, 0))
        for chain, trace in enumerate(data.get("loss_trace") or []):
            for draw, value in enumerate(trace):
                if (v := _finite(value)) is not None:
                    metrics.append(Metric(f"loss_trace/chain_{chain}", v, now, draw))

        records = {}
        for kind in CALIBRATED:
            record = extra.get(kind.record)
            if not isinstance(record, dict):
                continue
            records[kind.record] = record
            metrics += _calibration_metrics(record, now, kind)
            if (pick := _finite(record.get(kind.name))) is not None:
                param_objs.append(Param(f"calibration.{kind.name}", repr(pick)))
            tags.append(RunTag(f"llc.{kind.record}.reason", str(record.get("reason", ""))[:5000]))

        self._log_batch(run_id, metrics=metrics, params=param_objs, tags=tags)
        for key, record in records.items():
            self._call(lambda k=key, r=record: self.client.log_dict(run_id, r, f"{k}.json"))
        for path in artifacts:
            self._call(lambda p=path: self.client.log_artifact(run_id, str(p)))
        self._call(lambda: self.client.set_terminated(run_id, status="FINISHED"))
        return run_id

    def end_run(self, run_id: str, *, status: str) -> None:
        """End a run (the sweep's parent) with FINISHED, FAILED or KILLED, as its sweep ended."""
        self._call(lambda: self.client.set_terminated(run_id, status=status))

    def log_aggregate(self, *, parent_run_id: str, series: dict[str, list[tuple[int, float]]],
                      artifacts: Sequence[Path], existing_run_id: str | None = None) -> str:
        """The sweep's aggregate run: each series logged as a metric with step = training step,
        so the MLflow UI draws λ̂ over training. Re-aggregating replaces the previous
        aggregate run (soft-deleted, restorable in MLflow) unless its series are unchanged,
        so a metric never carries two histories."""
        from mlflow.entities import Metric

        parent = self._call(lambda: self.client.get_run(parent_run_id))
        exp_id = parent.info.experiment_id
        previous = self._live_run(existing_run_id)
        if previous is None:
            found = self._find_runs(
                exp_id, f"tags.`{TAG_KIND}` = 'aggregate' and tags.`{TAG_PARENT}` = '{parent_run_id}'")
            previous = found[0] if found else None

        clean = {metric_name(k): sorted((int(s), float(v)) for s, v in pts if _finite(v) is not None)
                 for k, pts in series.items()}
        if previous is not None and self._same_series(previous.info.run_id, clean):
            run_id = previous.info.run_id
        else:
            if previous is not None:
                self._call(lambda: self.client.delete_run(previous.info.run_id))
            sweep_tag = parent.data.tags.get(TAG_SWEEP_ID, "")
            run = self._call(lambda: self.client.create_run(exp_id, run_name="aggregate", tags={
                TAG_PARENT: parent_run_id, TAG_KIND: "aggregate", TAG_SWEEP_ID: sweep_tag}))
            run_id = run.info.run_id
            now = int(time.time() * 1000)
            metrics = [Metric(key, value, now, step) for key, pts in clean.items() for step, value in pts]
            self._log_batch(run_id, metrics=metrics)
        for path in artifacts:
            self._call(lambda p=path: self.client.log_artifact(run_id, str(p)))
        self._call(lambda: self.client.set_terminated(run_id, status="FINISHED"))
        return run_id

    def _same_series(self, run_id: str, series: dict[str, list[tuple[int, float]]]) -> bool:
        run = self._call(lambda: self.client.get_run(run_id))
        if set(run.data.metrics) != set(series):
            return False
        for key, pts in series.items():
            history = self._call(lambda k=key: self.client.get_metric_history(run_id, k))
            logged = sorted((int(m.step), float(m.value)) for m in history)
            if len(logged) != len(pts) or any(
                    a[0] != b[0] or not math.isclose(a[1], b[1], rel_tol=1e-9, abs_tol=1e-12)
                    for a, b in zip(logged, pts, strict=True)):
                return False
        return True


def sweep_parent_run(tracker: Tracker, *, sweep_id: int, database_url: str) -> str:
    """The sweep's MLflow parent run, created or reused, with its id kept on the sweep row.

    The scheduler's follow-up thread and the aggregator both need it; one place keeps the
    store and MLflow agreeing on which run is the sweep's."""
    with session_scope(database_url) as s:
        sweep = get_sweep(s, sweep_id=sweep_id)
    run_id = tracker.sweep_run(sweep_id=sweep_id, sweep_name=sweep.name, training_run=sweep.training_run_uri or "",
                               config=sweep.config, existing_run_id=sweep.mlflow_run_id)
    if run_id != sweep.mlflow_run_id:
        with session_scope(database_url) as s:
            set_sweep_mlflow_run(s, sweep_id=sweep_id, run_id=run_id)
    return run_id
