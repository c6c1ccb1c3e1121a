"""A sweep over components end to end: per-head jobs on local Ray with the worker's memory,
per-component curves, the per-head heatmap and clusters, MLflow metrics per component."""
from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from services.aggregator import aggregate_sweep
from services.scheduler.loop import Scheduler, SchedulerOptions
from services.scheduler.task import worker_memory_bytes
from services.store.db import session_scope
from services.store.results import sweep_results
from services.sweeps.config import load_config
from services.sweeps.submit import submit_sweep
from services.tracking import Tracker
from tests.services.sweeps.tiny_runs import tiny_overrides

pytestmark = pytest.mark.slow


def test_worker_memory_is_the_gpu_share_else_the_ray_reservation() -> None:
    assert worker_memory_bytes({"GPU": 0.5, "CPU": 1}, gpu_total_bytes=80 << 30) == 40 << 30
    assert worker_memory_bytes({"GPU": 2.0}, gpu_total_bytes=80 << 30) == 80 << 30     # one device per job
    assert worker_memory_bytes({"CPU": 1, "memory": 3 << 30}, gpu_total_bytes=None) == 3 << 30
    assert worker_memory_bytes({"CPU": 1}, gpu_total_bytes=None) is None


def test_component_sweep_gives_a_curve_per_head_and_their_clusters(storage: str, db: str, ray_cluster: str,
                                                                    mlflow_server: str, tmp_path: Path) -> None:
    cfg = load_config(tiny_overrides(storage, extra=("sampler.epsilon=[1e-4]", "sweep.components=[all,heads]",
                                                     "sweep.resources.memory_gb=1")))
    sub = submit_sweep(cfg, submitted_by="tester")
    assert sub.new == 3 * 5                       # 3 checkpoints x (all + 2 layers x 2 heads)
    tracker = Tracker(mlflow_server)
    opts = SchedulerOptions(database_url=db, sweep_id=sub.sweep_id, until_idle=True, max_in_flight=2, lease_seconds=30,
                            poll_seconds=0.2)
    run = Scheduler(opts, tracker=tracker, aggregate=False).run()
    assert (run.succeeded, run.failed) == (15, 0)  # type: ignore[attr-defined]
    with session_scope(db) as s:
        rows = sweep_results(s, sweep_id=sub.sweep_id)
    assert {r.hyperparameters["component"] for r in rows} == {"all", "l0h0", "l0h1", "l1h0", "l1h1"}
    assert all(r.diagnostics["memory_budget_bytes"] == 1 << 30 for r in rows)    # the Ray reservation
    sampled = {r.hyperparameters["component"]: r.diagnostics["num_sampled_params"] for r in rows}
    assert sampled["l0h0"] == sampled["l1h1"] < sampled["all"]

    report = aggregate_sweep(sweep_id=sub.sweep_id, database_url=db, tracker=tracker, out_dir=tmp_path)
    assert len(report.curves) == 5 and all(len(c.points) == 3 for c in report.curves)
    assert (tmp_path / "heads-01.png").exists() and (tmp_path / "heads-01.json").exists()
    assert any(n.startswith("heads clustered by λ̂ curve shape") for n in report.notes)
    metrics = MlflowClient(mlflow_server).get_run(report.mlflow_run_id).data.metrics
    assert {f"llc/eps0.0001_component{c}" for c in ("all", "l0h0", "l0h1", "l1h0", "l1h1")} <= set(metrics)
