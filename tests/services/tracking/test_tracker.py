"""Tracker against a real `mlflow server` (Postgres backend, moto S3 artifacts)."""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from services.core.endpoints import resolve_endpoints
from services.core.paths import llc_home
from services.tracking import Tracker, TrackingUnavailable, metric_name


def _result(chains: int = 3, draws: int = 400) -> dict:
    return {
        "llc_mean": 12.5, "llc_std": 0.75, "llc_per_chain": [12.0 + 0.5 * c for c in range(chains)],
        "init_loss": 2.25, "baseline_loss": 2.25, "nbeta": 31.4, "n": 512, "num_chains": chains,
        "num_draws": draws, "diverged": False,
        "diagnostics": {"r_hat": 1.03, "ess": 250.0, "mala_acceptance": None, "frac_draws_below_init": 0.125},
        "loss_trace": [[2.25 + 0.001 * d + 0.1 * c for d in range(draws)] for c in range(chains)],
        "wall_time_s": 4.5, "device": "cpu", "host": "h", "estimator_version": "1",
        "extra": {"path": "sequential", "fallback_reason": "compute-bound on CPU", "notes": {"baseline": "item_table"}},
    }


@pytest.fixture()
def tracker(mlflow_server: str) -> Tracker:
    return Tracker(mlflow_server)


def _sweep(tracker: Tracker) -> tuple[str, str]:
    name = f"sweep-{uuid.uuid4().hex[:8]}"
    return name, tracker.sweep_run(sweep_id=7, sweep_name=name, training_run="s3://b/run", config={"sampler": {"epsilon": 1e-4}})


def test_sweep_run_is_created_once_and_reused(tracker: Tracker, mlflow_server: str) -> None:
    name, run_id = _sweep(tracker)
    client = MlflowClient(mlflow_server)
    run = client.get_run(run_id)
    assert run.data.tags["llc.sweep_id"] == "7"
    assert run.data.tags["llc.training_run"] == "s3://b/run"
    assert client.get_experiment(run.info.experiment_id).name == name
    assert [a.path for a in client.list_artifacts(run_id)] == ["config.json"]
    # With the id, and without it (found again by its sweep tag): same run, no second one.
    assert tracker.sweep_run(sweep_id=7, sweep_name=name, training_run="s3://b/run", config={}, existing_run_id=run_id) == run_id
    assert tracker.sweep_run(sweep_id=7, sweep_name=name, training_run="s3://b/run", config={}) == run_id
    assert len(client.search_runs([run.info.experiment_id])) == 1


def test_log_job_child_run_params_metrics_and_trace(tracker: Tracker, mlflow_server: str) -> None:
    _, parent = _sweep(tracker)
    params = {"epsilon": 1e-4, "gamma": 100.0, "nbeta": 31.4, "num_chains": 3, "num_draws": 400, "batch_size": 32, "seed": 0}
    run_id = tracker.log_job(parent_run_id=parent, job_key="k" * 64, step=1000, params=params, result=_result())
    client = MlflowClient(mlflow_server)
    run = client.get_run(run_id)
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert run.info.status == "FINISHED"
    assert run.data.params["checkpoint_step"] == "1000"
    assert run.data.params["epsilon"] == "0.0001"
    assert (run.data.tags["llc.path"], run.data.tags["llc.note.baseline"]) == ("sequential", "item_table")
    assert run.data.tags["llc.fallback_reason"] == "compute-bound on CPU" and "llc.note.compile" not in run.data.tags
    assert run.data.metrics["llc_mean"] == pytest.approx(12.5)
    assert run.data.metrics["llc_chain/2"] == pytest.approx(13.0)
    assert run.data.metrics["diag/r_hat"] == pytest.approx(1.03)
    assert "diag/mala_acceptance" not in run.data.metrics  # None is not a number
    trace = client.get_metric_history(run_id, "loss_trace/chain_1")  # 1200 trace points → 2 batches
    assert sorted(m.step for m in trace) == list(range(400))
    assert {m.step: m.value for m in trace}[399] == pytest.approx(2.25 + 0.399 + 0.1)
    # A re-run of the finished job reuses its run and logs nothing twice.
    again = tracker.log_job(parent_run_id=parent, job_key="k" * 64, step=1000, params=params, result=_result())
    assert again == run_id
    assert len(client.get_metric_history(run_id, "loss_trace/chain_1")) == 400


def test_log_aggregate_steps_and_replacement(tracker: Tracker, mlflow_server: str, tmp_path: Path) -> None:
    _, parent = _sweep(tracker)
    art = tmp_path / "stages.csv"
    art.write_text("stage,start,end\n0,0,100\n")
    series = {"llc": [(0, 1.0), (100, 5.0), (1000, 3.0)], "llc/eps=1e-4": [(0, 1.0), (100, 5.0), (1000, 3.0)]}
    run_id = tracker.log_aggregate(parent_run_id=parent, series=series, artifacts=[art])
    client = MlflowClient(mlflow_server)
    hist = client.get_metric_history(run_id, "llc")
    assert sorted((m.step, m.value) for m in hist) == [(0, 1.0), (100, 5.0), (1000, 3.0)]
    assert metric_name("llc/eps=1e-4") in client.get_run(run_id).data.metrics
    assert [a.path for a in client.list_artifacts(run_id)] == ["stages.csv"]
    # Same series again: same run, history not doubled.
    assert tracker.log_aggregate(parent_run_id=parent, series=series, artifacts=[art]) == run_id
    assert len(client.get_metric_history(run_id, "llc")) == 3
    # New values: a fresh run replaces the old one (soft-deleted), never two histories in one run.
    changed = {"llc": [(0, 1.0), (100, 6.0), (1000, 3.0)]}
    new_id = tracker.log_aggregate(parent_run_id=parent, series=changed, artifacts=[], existing_run_id=run_id)
    assert new_id != run_id
    assert client.get_run(run_id).info.lifecycle_stage == "deleted"
    assert sorted(m.value for m in client.get_metric_history(new_id, "llc")) == [1.0, 3.0, 6.0]


def test_unreachable_server_is_one_clear_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from services.tracking import _HTTP_ENV_DEFAULTS

    for name in _HTTP_ENV_DEFAULTS:
        monkeypatch.delenv(name, raising=False)

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    with pytest.raises(TrackingUnavailable, match=f"MLflow tracking server at {uri} cannot be reached") as info:
        Tracker(uri).sweep_run(sweep_id=1, sweep_name="x", training_run="r", config={})
    assert "\n" not in str(info.value)
    # Short retries (2, backoff 1 s), not MLflow's multi-minute default (7, backoff factor 2).
    assert {name: os.environ[name] for name in _HTTP_ENV_DEFAULTS} == _HTTP_ENV_DEFAULTS


def test_embedded_store_puts_artifacts_under_llc_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLC_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    tracker = Tracker(resolve_endpoints().tracking_uri)
    assert tracker.tracking_uri == f"sqlite:///{llc_home() / 'mlflow.db'}"
    run_id = tracker.sweep_run(sweep_id=3, sweep_name="demo", training_run="file:///r", config={"a": 1})
    exp = tracker.client.get_experiment_by_name("demo")
    assert exp.artifact_location.startswith((llc_home() / "mlartifacts").as_uri())
    assert (llc_home() / "mlartifacts" / "demo" / run_id / "artifacts" / "config.json").is_file()
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlartifacts").exists()


def test_half_made_child_run_is_replaced_not_duplicated(tracker: Tracker, mlflow_server: str) -> None:
    """A try cut off after create_run (outage, kill -9) leaves a RUNNING run with the job's tags:
    the retry deletes it and logs one run, so the key has exactly one live child."""
    _, parent = _sweep(tracker)
    client = MlflowClient(mlflow_server)
    exp_id = client.get_run(parent).info.experiment_id
    key = uuid.uuid4().hex * 2
    half = client.create_run(exp_id, tags={"mlflow.parentRunId": parent, "llc.job_key": key, "llc.kind": "job",
                                           "llc.sweep_id": "7"})
    run_id = tracker.log_job(parent_run_id=parent, job_key=key, step=5, params={"seed": 0}, result=_result(),
                             sweep_id=7)
    assert run_id != half.info.run_id
    live = client.search_runs([exp_id], f"tags.`llc.job_key` = '{key}'")
    assert [r.info.run_id for r in live] == [run_id] and live[0].info.status == "FINISHED"
    assert client.get_run(half.info.run_id).info.lifecycle_stage == "deleted"
