"""Jobs that dropped some diverged chains: left out by default, kept and marked up to a share."""
from __future__ import annotations

import math

from services.aggregator.curves import build_curves, diverged_share
from services.aggregator.stability import assess
from services.store.entities import ResultRow

HYPER = {"epsilon": 1e-4, "gamma": 100.0}


def _row(job_id: int, step: int, chains: list[float], status: str) -> ResultRow:
    ok = [c for c in chains if math.isfinite(c)]
    return ResultRow(job_id=job_id, key=f"k{job_id}", step=step, checkpoint_uri=f"s3://b/run/step-{step}",
                     hyperparameters=HYPER, seed=0, status=status, mlflow_run_id=None, llc_mean=sum(ok) / len(ok) if ok else None, llc_std=0.1,
                     llc_per_chain=[c if math.isfinite(c) else None for c in chains], init_loss=1.0,
                     diagnostics={"r_hat": 1.01}, error=None, diverged=status == "diverged")


ROWS = [_row(1, 0, [5.0, 5.2, 5.1, 4.9], "succeeded"),
        _row(2, 10, [6.0, math.nan, 6.2, 6.1], "diverged"),          # 1 of 4 chains dropped
        _row(3, 20, [math.nan, math.nan, math.nan, 7.0], "diverged")]  # 3 of 4 dropped


def test_share_counts_the_dropped_chains() -> None:
    assert [diverged_share(r) for r in ROWS] == [0.0, 0.25, 0.75]


def test_default_leaves_every_partially_diverged_job_out() -> None:
    (curve,), _ = build_curves(ROWS)
    assert [p.step for p in curve.points] == [0]
    assert curve.diverged_steps == (10, 20) and curve.partial_steps == ()
    (verdict,) = assess([curve])
    assert not verdict.usable and "2 diverged job(s)" in verdict.reasons


def test_jobs_within_the_share_are_kept_and_marked() -> None:
    (curve,), totals = build_curves(ROWS, max_diverged_share=0.25)
    assert [p.step for p in curve.points] == [0, 10]
    assert curve.points[1].n_estimates == 3                      # the surviving chains only
    assert curve.partial_steps == (10,) and curve.diverged_steps == (20,)
    assert totals["diverged"] == 2                                # job statuses as stored
    (verdict,) = assess([curve])
    assert verdict.partially_diverged_jobs == 1 and verdict.diverged_jobs == 1
