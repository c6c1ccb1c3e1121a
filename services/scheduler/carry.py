"""epsilon=auto along a sweep: carry the step calibrated on earlier checkpoints to later jobs.

A job whose epsilon is "auto" and that has no hint runs the estimator's full pilot scan
(workers/llc/calibration.py, a few times a fixed-epsilon job). Once a job of the same sweep
and setting has calibrated, later jobs get its pick as JobSpec.epsilon_hint: the estimator
runs at the hint and keeps it when that run's own traces pass (no divergence, rank R-hat,
no drift), else recalibrates, and that fresh pick is carried from then on. So a sweep pays
the pilot on the first in-flight window of jobs per setting and about 1x afterwards.
The hint changes how a job runs, not what it asks for: it is not part of the job key.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

from services.store.jobkey import setting_key


class EpsilonCarry:
    """The latest calibrated epsilon per (sweep, setting), for jobs with epsilon="auto"."""

    def __init__(self) -> None:
        self._picks: dict[tuple[int, str], float] = {}

    def observe(self, sweep_ids: tuple[int, ...], hyperparameters: dict[str, Any], result: dict[str, Any]) -> None:
        """Remember a finished job's fresh calibration (carried picks add nothing new)."""
        if hyperparameters.get("epsilon") != "auto":
            return
        calibration = (result.get("extra") or {}).get("calibration") or {}
        eps = calibration.get("epsilon")
        if calibration.get("carried") or not isinstance(eps, (int, float)) or not eps > 0:
            return
        key = setting_key(hyperparameters)
        for sid in sweep_ids:
            self._picks[(sid, key)] = float(eps)

    def hint(self, sweep_ids: tuple[int, ...], hyperparameters: dict[str, Any]) -> float | None:
        if hyperparameters.get("epsilon") != "auto":
            return None
        key = setting_key(hyperparameters)
        for sid in sweep_ids:
            if (sid, key) in self._picks:
                return self._picks[(sid, key)]
        return None

    def apply(self, spec: Any, sweep_ids: tuple[int, ...], hyperparameters: dict[str, Any]) -> Any:
        """The spec with epsilon_hint set when a pick is known (a JobSpec: frozen, so a copy)."""
        hint = self.hint(sweep_ids, hyperparameters)
        if hint is None or getattr(spec, "epsilon_hint", None) is not None:
            return spec
        return replace(spec, epsilon_hint=hint)
