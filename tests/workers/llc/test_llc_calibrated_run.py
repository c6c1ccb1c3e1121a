"""calibrated_run.py: the gamma step-up on synthetic scans (the real pick rule, synthetic pilots)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest

from workers.llc.calibrated_run import _step_up
from workers.llc.calibration import PilotStats
from workers.llc.localization import STEP_UP, GammaCalibration, GammaPilot, calibrate_gamma

NBETA = 1000.0


def _scan(passes: dict[float, bool]) -> tuple[Callable[..., GammaCalibration], list[tuple[float, bool]]]:
    """scan(c, slow) as CalibratedRun.gamma_scan: pilots whose traces pass at the steps in `passes`.

    lambda_hat(g) = 4 / (1 + 10 g), the same per-chain offsets at every gamma: where the traces
    pass, the scan settles at g = 0.001 (see test_llc_localization)."""
    calls: list[tuple[float, bool]] = []

    def scan(c: float, *, slow: bool = False) -> GammaCalibration:
        calls.append((c, slow))

        def pilot(gamma: float) -> GammaPilot:
            level = 4.0 / (1 + 10 * gamma / NBETA)
            stats = PilotStats(epsilon=c / NBETA, llc_mean=level, llc_se=0.2, r_hat=1.01 if passes[c] else 1.6,
                               drift_z=0.5, chains_dropped=0, chain_steps=100)
            return GammaPilot(gamma=gamma, stats=stats, llc_per_chain=tuple(level + o for o in (-0.3, -0.1, 0.1, 0.3)),
                              dist_ratio=1.0)

        cal = calibrate_gamma(pilot, nbeta=NBETA, epsilon=c / NBETA, skip_failures=slow)
        return replace(cal, steps_tried=(c,))

    return scan, calls


def test_step_up_stops_at_the_first_rung_that_settles() -> None:
    scan, calls = _scan({0.01: False, 0.1: True, 1.0: True})
    floor = scan(0.01)
    cal = _step_up(floor, scan)
    assert calls == [(0.01, False), (0.1, True)]          # 0.1 settled: the top rung is not scanned
    assert cal.steps_tried == (0.01, 0.1) and cal.settled
    assert cal.gamma == pytest.approx(0.001 * NBETA) and cal.epsilon == pytest.approx(0.1 / NBETA)
    assert cal.points[:len(floor.points)] == floor.points and len(cal.points) > len(floor.points)
    assert cal.pilot_chain_steps == 100 * len(cal.points)
    assert cal.reason.startswith("no gamma pilot passed at eps*nbeta*s = 0.01 (e.g. R-hat")
    assert "the pilots' step went up to 0.1; there: lambda_hat stopped rising" in cal.reason


def test_step_up_keeps_the_floor_record_when_no_rung_passes() -> None:
    scan, calls = _scan({0.01: False, 0.1: False, 1.0: False})
    floor = scan(0.01)
    cal = _step_up(floor, scan)
    assert calls == [(0.01, False), *[(c, True) for c in STEP_UP]]
    assert cal.steps_tried == (0.01, *STEP_UP) and not any(p.usable for p in cal.points)
    assert cal.gamma == floor.gamma and cal.epsilon == floor.epsilon
    assert cal.reason == f"{floor.reason}; no gamma pilot passed at the larger steps 0.1, 1 either"
