"""epsilon="auto": the pick rule on synthetic pilots, and the carried hint in estimate_llc."""
from __future__ import annotations

import math

import pytest

from workers.llc import SGLDConfig, estimate_llc
from workers.llc.calibration import GRID, PilotStats, burnin_for, calibrate, carried, pilot_draws

from .llc_toy_models import half_mse, linear_regression

NBETA = 1000.0


def _pilot(*, lam: float = 4.0, slope: float = 4.0, se: float = 0.05, diverge_above: float = 2.0):
    """lambda_hat(c) = lam (1 + slope c): the discretization bias, linear in c = eps * nbeta."""
    calls: list[float] = []

    def run(eps: float) -> PilotStats:
        c = eps * NBETA
        calls.append(c)
        if c > diverge_above:
            return PilotStats(epsilon=eps, llc_mean=math.nan, llc_se=math.inf, r_hat=math.nan, drift_z=math.nan,
                              chains_dropped=4, chain_steps=10)
        return PilotStats(epsilon=eps, llc_mean=lam * (1 + slope * c), llc_se=se, r_hat=1.01, drift_z=0.5,
                          chains_dropped=0, chain_steps=100)

    return run, calls


def test_pick_is_the_smaller_step_of_the_first_agreeing_pair() -> None:
    run, calls = _pilot(slope=1.0, se=0.2)
    cal = calibrate(run, nbeta=NBETA)
    # lambda_hat 4 (1 + c): 0.3 -> 0.1 differ by 0.8 (> 2 s.e. = 0.57); 0.1 -> 0.03 by 0.28
    # (< 0.57 and 6.8% < 10%): they agree, and the smaller step is taken.
    assert cal.epsilon == pytest.approx(0.03 / NBETA)
    assert calls == [c for c in GRID if c >= 0.03]           # the scan stops at the pick
    assert [p.usable for p in cal.points][:1] == [False] and "diverged" in cal.points[0].why
    assert "agree" in cal.reason and cal.pilot_chain_steps == 10 + 100 * (len(calls) - 1)
    record = cal.to_dict()
    assert record["epsilon"] == cal.epsilon and len(record["points"]) == len(calls)


def test_noisy_pilots_that_never_agree_take_the_smallest_usable_step() -> None:
    run, _ = _pilot(slope=400.0, se=0.0001)
    cal = calibrate(run, nbeta=NBETA)
    assert cal.epsilon == pytest.approx(GRID[-1] / NBETA) and "no two neighbouring steps agreed" in cal.reason


def test_equal_time_pilots_and_burn_in() -> None:
    assert pilot_draws(0.01) == 1000 and pilot_draws(3.0) == 100
    assert burnin_for(50, 0.01) == 1000 and burnin_for(5000, 0.01) == 5000


def test_a_carried_step_is_kept_only_when_its_traces_pass() -> None:
    ok = PilotStats(epsilon=1e-5, llc_mean=4.0, llc_se=0.1, r_hat=1.01, drift_z=0.3, chains_dropped=0, chain_steps=9)
    kept = carried(ok, nbeta=NBETA, scale=1.0)
    assert kept is not None and kept.carried and kept.epsilon == 1e-5
    assert carried(PilotStats(**{**ok.__dict__, "chains_dropped": 1}), nbeta=NBETA, scale=1.0) is None
    assert carried(PilotStats(**{**ok.__dict__, "drift_z": 9.0}), nbeta=NBETA, scale=1.0) is None


def test_estimate_llc_keeps_a_good_hint_and_recalibrates_after_a_bad_one() -> None:
    model, data = linear_regression(n=2_000, d_in=3, d_out=2, seed=1)
    nbeta = 2_000 / math.log(2_000)
    base = dict(epsilon="auto", gamma=100.0, num_chains=4, num_draws=200, num_burnin=0, batch_size=100, seed=2)
    good = estimate_llc(model, half_mse, data, config=SGLDConfig(**base, epsilon_hint=0.03 / nbeta))
    assert good.calibration["carried"] is True and good.diagnostics["epsilon_carried"] is True
    assert good.diagnostics["epsilon"] == pytest.approx(0.03 / nbeta)
    assert good.diagnostics["calibration_chain_steps"] == 0 and "carried" in good.notes["epsilon"]
    bad = estimate_llc(model, half_mse, data, config=SGLDConfig(**base, epsilon_hint=5.0 / nbeta))  # diverges
    assert bad.calibration["carried"] is False and len(bad.calibration["points"]) >= 2
    assert bad.diagnostics["epsilon"] < 5.0 / nbeta and not bad.diverged
