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


def _log(mlflow_server: str, png: Path, *, job_key: str, params: dict, **records: dict) -> str:
    """A job's child run with the given calibration records in its extra and the plot attached."""
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    tracker = Tracker(mlflow_server)
    parent = tracker.sweep_run(sweep_id=9, sweep_name=f"sweep-{uuid.uuid4().hex[:8]}", training_run="s3://b/run",
                               config={})
    result = _result()
    result["extra"].update(records)
    return tracker.log_job(parent_run_id=parent, job_key=job_key, step=5, params=params, result=result, artifacts=[png])


def test_calibration_is_logged_with_its_plot(mlflow_server: str, tmp_path: Path) -> None:
    png = plot_calibration(CALIBRATION, tmp_path / "calibration.png")
    run_id = _log(mlflow_server, png, job_key="c" * 64, params={"epsilon": "auto"}, calibration=CALIBRATION)
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


GAMMA_CALIBRATION = {
    "gamma": 10.9, "reason": "lambda_hat stopped rising from gamma/nbeta = 0.03 to 0.01", "epsilon": 9.2e-6,
    "carried": False, "pilot_chain_steps": 90000,
    "points": [
        {"ratio": 0.1, "gamma": 108.6, "usable": True, "why": "", "rise": None, "rise_se": None, "dist_ratio": 1.0,
         "epsilon": 9.2e-6, "llc_mean": 1.9, "llc_se": 0.1, "r_hat": 1.01, "drift_z": 0.4, "chains_dropped": 0,
         "chain_steps": 16000},
        {"ratio": 0.01, "gamma": 10.9, "usable": True, "why": "", "rise": 0.04, "rise_se": 0.05, "dist_ratio": 1.1,
         "epsilon": 9.2e-6, "llc_mean": 2.3, "llc_se": 0.1, "r_hat": 1.01, "drift_z": 0.9, "chains_dropped": 0,
         "chain_steps": 88000},
    ],
}


def test_gamma_calibration_is_logged_beside_the_epsilon_one(mlflow_server: str, tmp_path: Path) -> None:
    png = plot_calibration(GAMMA_CALIBRATION, tmp_path / "gamma_calibration.png", x="gamma")
    run_id = _log(mlflow_server, png, job_key="d" * 64, params={"epsilon": "auto", "gamma": "auto"},
                  calibration=CALIBRATION, gamma_calibration=GAMMA_CALIBRATION)
    client = MlflowClient(mlflow_server)
    run = client.get_run(run_id)
    assert run.data.params["calibration.gamma"] == repr(10.9) and run.data.params["calibration.epsilon"] == repr(1.15e-6)
    assert run.data.tags["llc.gamma_calibration.reason"].startswith("lambda_hat stopped rising")
    history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "gamma_calibration/gamma"))
    assert history == [(0, 108.6), (1, 10.9)]
    rise = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "gamma_calibration/rise"))
    assert rise == [(1, 0.04)]                                                     # the first pilot has none
    assert {a.path for a in client.list_artifacts(run_id)} == {"calibration.json", "gamma_calibration.json",
                                                               "gamma_calibration.png"}
    stored = json.loads(Path(client.download_artifacts(run_id, "gamma_calibration.json", str(tmp_path))).read_text())
    assert stored["gamma"] == 10.9 and len(stored["points"]) == 2
