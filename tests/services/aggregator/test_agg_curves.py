"""Curves use L_n(w*) (loss_wstar) when the estimator reported it, else init_loss."""
from __future__ import annotations

from services.aggregator.curves import build_curves
from services.store.entities import ResultRow


def _row(job_id: int, step: int, *, init_loss: float, loss_wstar: float | None) -> ResultRow:
    return ResultRow(job_id=job_id, key=f"k{job_id}", step=step, checkpoint_uri=f"file:///r/step-{step}",
                     hyperparameters={"epsilon": 1e-4}, seed=0, status="succeeded", error=None, mlflow_run_id=None,
                     llc_mean=10.0 + step, llc_std=1.0, llc_per_chain=[9.0 + step, 11.0 + step], init_loss=init_loss,
                     loss_wstar=loss_wstar, diagnostics={"r_hat": 1.0})


def test_points_use_loss_wstar_when_present_else_init_loss() -> None:
    (curve,), counts = build_curves([_row(1, 0, init_loss=3.0, loss_wstar=2.5), _row(2, 10, init_loss=2.0, loss_wstar=None)])
    assert [(p.step, p.loss_wstar) for p in curve.points] == [(0, 2.5), (10, 2.0)]
    assert counts["succeeded"] == 2 and curve.label == "eps=0.0001"
