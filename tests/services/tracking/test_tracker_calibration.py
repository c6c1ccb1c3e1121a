"""An epsilon=auto job's calibration in MLflow: per-pilot metrics, the pick, the JSON record and its plot."""
from __future__ import annotations

import json
import uuid
from pathlib import Path

from mlflow.tracking import MlflowClient

from services.aggregator.calibration_plot import plot_calibration
from services.tracking import Tracker

from .test_tracker import _result

CALIBRATION = {
    "epsilon": 1.15e-6, "reason": "eps*nbeta*s = 0.01 and 0.03 agree", "scale": 1.0, "carried": False,
    "pilot_chain_steps": 12000, "num_burnin": 1000,
    "points": [
        {"step": 3.0, "epsilon": 3.4e-4, "llc_mean": float("nan"), "llc_se": float("inf"), "r_hat": float("nan"),
         "drift_z": float("nan"), "chains_dropped": 4, "chain_steps": 40, "usable": False, "why": "4 chain(s) diverged"},
        {"step": 0.03, "epsilon": 3.45e-6, "llc_mean": 4.4, "llc_se": 0.2, "r_hat": 1.01, "drift_z": 0.5,
         "chains_dropped": 0, "chain_steps": 5000, "usable": True, "why": ""},
        {"step": 0.01, "epsilon": 1.15e-6, "llc_mean": 4.1, "llc_se": 0.2, "r_hat": 1.01, "drift_z": 0.7,
         "chains_dropped": 0, "chain_steps": 7000, "usable": True, "why": ""},
    ],
}


def test_calibration_is_logged_with_its_plot(mlflow_server: str, tmp_path: Path) -> None:
    tracker = Tracker(mlflow_server)
    parent = tracker.sweep_run(sweep_id=9, sweep_name=f"sweep-{uuid.uuid4().hex[:8]}", training_run="s3://b/run",
                               config={})
    result = _result()
    result["extra"]["calibration"] = CALIBRATION
    png = plot_calibration(CALIBRATION, tmp_path / "calibration.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    run_id = tracker.log_job(parent_run_id=parent, job_key="c" * 64, step=5, params={"epsilon": "auto"},
                             result=result, artifacts=[png])
    client = MlflowClient(mlflow_server)
    run = client.get_run(run_id)
    assert run.data.params["calibration.epsilon"] == repr(1.15e-6)
    assert run.data.tags["llc.calibration.reason"].startswith("eps*nbeta*s = 0.01")
    history = client.get_metric_history(run_id, "calibration/llc_mean")
    assert sorted((m.step, m.value) for m in history) == [(1, 4.4), (2, 4.1)]     # the diverged pilot has no value
    usable = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "calibration/usable"))
    assert usable == [(0, 0.0), (1, 1.0), (2, 1.0)]
    assert {a.path for a in client.list_artifacts(run_id)} == {"calibration.json", "calibration.png"}
    stored = json.loads(Path(client.download_artifacts(run_id, "calibration.json", str(tmp_path))).read_text())
    assert stored["epsilon"] == 1.15e-6 and len(stored["points"]) == 3
