"""Stage detection on synthetic λ̂ curves whose transitions are known."""
from __future__ import annotations

import numpy as np
import pytest

from services.aggregator.stages import KIND_A, KIND_B, KIND_OTHER, classify, detect_stages, fit_curve, to_x

STEPS = np.unique(np.r_[0, np.round(np.geomspace(10, 20000, 40))]).astype(int)
X = to_x(STEPS)


def _sig(t: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-t))


def _bump() -> tuple[np.ndarray, np.ndarray]:
    """λ̂ rises around step 300 while the loss falls, then falls around 3000 with loss flat."""
    llc = 10 + 30 * _sig((X - np.log(300)) / 0.3) - 12 * _sig((X - np.log(3000)) / 0.3)
    loss = 3 - 2 * _sig((X - np.log(300)) / 0.3)
    return llc, loss


@pytest.mark.parametrize("seed", range(6))
def test_induction_bump_found_and_typed(seed: int) -> None:
    rng = np.random.default_rng(seed)
    llc, loss = _bump()
    peak = STEPS[np.argmax(llc)]
    found = detect_stages(STEPS, llc + rng.normal(0, 1.0, len(X)), np.ones(len(X)),
                          loss=loss + rng.normal(0, 0.01, len(X)))
    assert len(found.boundary_steps) == 1
    assert abs(np.log(found.boundary_steps[0] / peak)) < 0.5  # within a factor e^0.5 of the true peak
    assert [s.kind for s in found.stages] == [KIND_A, KIND_B]
    first, second = found.stages
    assert (first.start_step, second.end_step) == (0, int(STEPS[-1]))
    assert first.end_step == second.start_step
    assert first.llc_change > 20 and second.llc_change < -5
    assert first.loss_change is not None and first.loss_change < -1.5


@pytest.mark.parametrize("seed", range(4))
def test_plateau_between_two_rises_splits_them(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    llc = 10 + 20 * _sig((X - np.log(100)) / 0.3) + 20 * _sig((X - np.log(5000)) / 0.3)
    loss = 3 - _sig((X - np.log(100)) / 0.3) - _sig((X - np.log(5000)) / 0.3)
    found = detect_stages(STEPS, llc + rng.normal(0, 1.0, len(X)), np.ones(len(X)), loss=loss)
    assert len(found.boundary_steps) == 1
    assert 100 < found.boundary_steps[0] < 5000
    assert [s.kind for s in found.stages] == [KIND_A, KIND_A]


@pytest.mark.parametrize("seed", range(8))
def test_flat_noisy_curve_has_no_stages(seed: int) -> None:
    rng = np.random.default_rng(200 + seed)
    noisy = 20 + rng.normal(0, 1.0, len(X))
    assert detect_stages(STEPS, noisy, np.ones(len(X)), loss=np.full(len(X), 2.0)).stages == ()
    assert detect_stages(STEPS, noisy, None).stages == ()


def test_classification_rules() -> None:
    assert classify(5.0, -1.0, 2.0) == KIND_A        # λ̂ up, loss down
    assert classify(-5.0, -0.05, 2.0) == KIND_B      # λ̂ down, loss about flat (≤ 10% of its range)
    assert classify(-5.0, -1.0, 2.0) == KIND_OTHER   # λ̂ down while loss falls a lot
    assert classify(5.0, 0.0, 2.0) == KIND_OTHER     # λ̂ up with flat loss
    assert classify(5.0, None, 2.0) == KIND_OTHER    # no loss known


def test_fit_keeps_step_zero_and_follows_weights() -> None:
    steps = np.array([0, 10, 100, 1000, 10000, 100000])
    y = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])  # linear in log(step) roughly
    fit = fit_curve(steps, y, np.full(6, 0.1))
    assert fit.grid_x[0] == 0.0 and fit.grid_steps[-1] == pytest.approx(100000)
    assert fit.at([0.0])[0] == pytest.approx(1.0, abs=0.5)
    # A point with huge σ barely pulls the fit; the same point with small σ does.
    y2 = y.copy()
    y2[3] = 40.0
    loose = fit_curve(steps, y2, np.array([0.1, 0.1, 0.1, 100.0, 0.1, 0.1]))
    tight = fit_curve(steps, y2, np.array([0.1, 0.1, 0.1, 0.1, 0.1, 0.1]))
    x3 = to_x([1000])
    assert loose.at(x3)[0] < 10 < tight.at(x3)[0]


def test_few_checkpoints_degrade_gracefully() -> None:
    one = detect_stages([100], [5.0])
    assert one.stages == () and "one checkpoint" in one.notes[0]
    three = detect_stages([0, 100, 1000], [1.0, 50.0, 100.0], [1.0, 1.0, 1.0], loss=[3.0, 2.0, 1.0])
    assert [s.kind for s in three.stages] == [KIND_A]
