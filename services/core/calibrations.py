"""The two hyperparameters the estimator can calibrate ("auto"), named once.

For each: where a job's result keeps the record (JobResult extra[record]), the pick's key in it,
the JobSpec field a carried pick goes into, its symbol in plots, and the per-pilot values logged
to MLflow as `{record}/{key}`. The carry, the tracker, the MLflow sync and the plot read these.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Calibrated:
    name: str                      # the sampler hyperparameter, e.g. "epsilon"
    record: str                    # JobResult.extra key of its calibration record
    hint: str                      # JobSpec field a carried pick is passed in
    symbol: str                    # in plot labels
    pilot_metrics: tuple[str, ...]  # per-pilot values logged to MLflow


EPSILON = Calibrated(name="epsilon", record="calibration", hint="epsilon_hint", symbol="ε",
                     pilot_metrics=("epsilon", "llc_mean", "llc_se", "r_hat", "drift_z"))
GAMMA = Calibrated(name="gamma", record="gamma_calibration", hint="gamma_hint", symbol="γ",
                   pilot_metrics=("gamma", "ratio", "epsilon", "llc_mean", "llc_se", "rise", "rise_se", "dist_ratio",
                                  "r_hat", "drift_z"))
CALIBRATED: tuple[Calibrated, ...] = (EPSILON, GAMMA)
BY_NAME = {c.name: c for c in CALIBRATED}
