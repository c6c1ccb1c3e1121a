"""epsilon=auto / gamma=auto along a sweep: carry the picks calibrated on earlier checkpoints to later jobs.

A job whose epsilon (or gamma) is "auto" and that has no hint runs the estimator's full pilot
scan (workers/llc/calibration.py, localization.py; a few times a fixed job). Once a job of the
same sweep and setting has calibrated, later jobs get its pick as JobSpec.epsilon_hint /
gamma_hint: the estimator runs at the hint and keeps it when that run's own traces pass (no
divergence, rank R-hat, no drift), else recalibrates, and that fresh pick is carried from then
on. So a sweep pays the pilots on the first in-flight window of jobs per setting and about 1x
afterwards. A hint changes how a job runs, not what it asks for: it is not part of the job key.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

from services.core.calibrations import CALIBRATED
from services.store.jobkey import setting_key


class CalibrationCarry:
    """The latest calibrated epsilon and gamma per (sweep, setting), for jobs that ask for "auto"."""

    def __init__(self) -> None:
        self._picks: dict[tuple[int, str, str], float] = {}

    def observe(self, sweep_ids: tuple[int, ...], hyperparameters: dict[str, Any], result: dict[str, Any]) -> None:
        """Remember a finished job's fresh calibrations (carried picks add nothing new)."""
        for c in CALIBRATED:
            if hyperparameters.get(c.name) != "auto":
                continue
            calibration = (result.get("extra") or {}).get(c.record) or {}
            pick = calibration.get(c.name)
            if calibration.get("carried") or isinstance(pick, bool) or not isinstance(pick, (int, float)) or not pick > 0:
                continue
            key = setting_key(hyperparameters)
            for sid in sweep_ids:
                self._picks[(sid, key, c.name)] = float(pick)

    def hint(self, sweep_ids: tuple[int, ...], hyperparameters: dict[str, Any], name: str = "epsilon") -> float | None:
        if hyperparameters.get(name) != "auto":
            return None
        key = setting_key(hyperparameters)
        for sid in sweep_ids:
            if (sid, key, name) in self._picks:
                return self._picks[(sid, key, name)]
        return None

    def apply(self, spec: Any, sweep_ids: tuple[int, ...], hyperparameters: dict[str, Any]) -> Any:
        """The spec with epsilon_hint / gamma_hint set where a pick is known (a JobSpec: frozen, so a copy)."""
        hints = {}
        for c in CALIBRATED:
            value = self.hint(sweep_ids, hyperparameters, c.name)
            if value is not None and getattr(spec, c.hint, None) is None:
                hints[c.hint] = value
        return replace(spec, **hints) if hints else spec
