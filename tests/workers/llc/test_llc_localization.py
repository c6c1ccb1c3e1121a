"""gamma="auto": the pick rule on synthetic pilots, and the scan and carried hint in estimate_llc."""
from __future__ import annotations

import math

import pytest

from workers.llc import SGLDConfig, estimate_llc
from workers.llc.calibration import PilotStats, burnin_for
from workers.llc.localization import (GAMMA_GRID, MAX_PILOT_STEPS, GammaPilot, calibrate_gamma, carried_gamma,
                                      paired_rise, pilot_steps, relax_steps)

from .llc_toy_models import half_mse, linear_regression

NBETA = 1000.0
OFFSETS = (-0.3, -0.1, 0.1, 0.3)        # per-chain deviations shared by every pilot (same seed, same noise)


def _pilot(*, lam: float = 4.0, k: float = 10.0, dist_ratio=lambda g: 1.0):
    """lambda_hat(g) = lam / (1 + k g): the localization shrinks it, less as g = gamma/nbeta falls."""
    calls: list[float] = []

    def run(gamma: float) -> GammaPilot:
        g = gamma / NBETA
        calls.append(g)
        level = lam / (1 + k * g)
        stats = PilotStats(epsilon=1e-5, llc_mean=level, llc_se=0.2, r_hat=1.01, drift_z=0.5, chains_dropped=0,
                           chain_steps=100)
        return GammaPilot(gamma=gamma, stats=stats, llc_per_chain=tuple(level + o for o in OFFSETS),
                          dist_ratio=dist_ratio(g))

    return run, calls


def test_pick_is_the_weaker_gamma_of_the_first_pair_where_lambda_hat_stopped_rising() -> None:
    run, calls = _pilot()
    cal = calibrate_gamma(run, nbeta=NBETA, epsilon=1e-5)
    # 4/(1 + 10 g): 0.1 -> 0.03 rises 54%, 0.03 -> 0.01 21%, 0.01 -> 0.003 7%, 0.003 -> 0.001 2%
    # (<= 5%, and the paired s.e. is 0: the chains' offsets cancel): stop, take 0.001.
    assert cal.gamma == pytest.approx(0.001 * NBETA)
    assert calls == pytest.approx([g for g in GAMMA_GRID if g >= 0.001])
    assert "stopped rising" in cal.reason and cal.pilot_chain_steps == 100 * len(calls)
    record = cal.to_dict()
    assert record["gamma"] == cal.gamma and len(record["points"]) == len(calls)
    assert record["points"][0]["rise"] is None and record["points"][1]["rise"] == pytest.approx(4 / 1.3 - 2)


def test_paired_rise_cancels_what_the_chains_share() -> None:
    run, _ = _pilot()
    rise, se = paired_rise(run(0.1 * NBETA), run(0.03 * NBETA))
    assert rise == pytest.approx(4 / 1.3 - 2) and se == pytest.approx(0.0, abs=1e-12)


def test_a_rise_lost_in_noise_does_not_stop_the_scan() -> None:
    # Chains that disagree between pilots (a paired s.e. of 0.35): the small rises are not shown to
    # be small, so the scan goes on to the weakest gamma it can afford.
    run, calls = _pilot(k=0.1)

    def noisy(gamma: float) -> GammaPilot:
        p = run(gamma)
        flip = 1 if len(calls) % 2 else -1
        return GammaPilot(gamma=p.gamma, stats=p.stats, dist_ratio=1.0,
                          llc_per_chain=tuple(v + flip * o * 2 for v, o in zip(p.llc_per_chain, OFFSETS, strict=True)))

    cal = calibrate_gamma(noisy, nbeta=NBETA, epsilon=1e-5)
    assert cal.gamma == pytest.approx(GAMMA_GRID[-1] * NBETA) and "still rising" in cal.reason


def test_chains_that_drift_away_end_the_scan_at_the_last_localized_gamma() -> None:
    run, calls = _pilot(dist_ratio=lambda g: 3.0 if g < 0.02 else 1.1)
    cal = calibrate_gamma(run, nbeta=NBETA, epsilon=1e-5)
    assert cal.gamma == pytest.approx(0.03 * NBETA) and len(calls) == 3
    assert "not localized" in cal.points[-1].why and not cal.points[-1].usable


def test_a_gamma_too_slow_to_relax_is_not_run() -> None:
    run, calls = _pilot()
    cal = calibrate_gamma(run, nbeta=NBETA, epsilon=1e-5, cost=lambda g: pilot_steps(0, 0.01, g)[0])
    # 2 / (c g) steps: 0.01 needs 20,000, 0.003 would need 66,667 (> MAX_PILOT_STEPS).
    assert pilot_steps(0, 0.01, 0.003)[0] > MAX_PILOT_STEPS >= pilot_steps(0, 0.01, 0.01)[0]
    assert calls == pytest.approx([0.1, 0.03, 0.01]) and cal.gamma == pytest.approx(0.01 * NBETA)
    assert "would need" in cal.reason


def test_relaxation_sets_the_burn_in() -> None:
    assert relax_steps(0.01, 0.01) == 20_000 and pilot_steps(0, 0.01, 0.1) == (2_000, 2_000)
    assert pilot_steps(50_000, 0.01, 0.1)[0] == 50_000
    # The step-up's slow pilots draw for as long as they burn in (one relaxation time each at c = 1).
    assert pilot_steps(0, 1.0, 0.001) == (2_000, 100) and pilot_steps(0, 1.0, 0.001, slow=True) == (2_000, 2_000)
    assert pilot_steps(0, 1.0, 0.1, slow=True) == (20, 100)


def _flaky(run, bad: tuple[float, ...], **changes):
    """run's pilots, with `changes` to the stats of those at g in bad (their traces fail)."""
    def pilot(gamma: float) -> GammaPilot:
        p = run(gamma)
        fails = gamma / NBETA in bad
        return GammaPilot(gamma=p.gamma, stats=PilotStats(**{**p.stats.__dict__, **(changes if fails else {})}),
                          llc_per_chain=p.llc_per_chain, dist_ratio=1.0)
    return pilot


@pytest.mark.parametrize("skip_failures", [False, True])
def test_pilots_that_have_not_mixed_are_passed_over(skip_failures: bool) -> None:
    # Localized pilots whose R-hat fails (the step-up's lambda_hat ~ 0 traces at strong gammas, or
    # a plain scan's pilot one burn-in short of mixing): recorded and passed over; the rise is
    # measured from the last usable pilot.
    run, _ = _pilot()
    cal = calibrate_gamma(_flaky(run, (0.03, 0.01), r_hat=1.5), nbeta=NBETA, epsilon=1e-5, skip_failures=skip_failures)
    # usable: 0.1, 0.003, 0.001, ...: the rise 0.003 -> 0.001 is 2% (paired s.e. 0): stop at 0.001.
    assert cal.gamma == pytest.approx(0.001 * NBETA) and cal.settled
    assert [p.usable for p in cal.points] == [True, False, False, True, True]
    assert cal.points[1].why == "R-hat 1.5 >= 1.1" and math.isnan(cal.points[1].rise)
    assert cal.points[3].rise == pytest.approx(4 / 1.03 - 4 / 2)
    assert cal.to_dict()["settled"] is True


def test_a_diverged_pilot_ends_the_plain_scan_but_not_the_step_up() -> None:
    run, _ = _pilot()
    plain = calibrate_gamma(_flaky(run, (0.03, 0.01), chains_dropped=1), nbeta=NBETA, epsilon=1e-5)
    assert plain.gamma == pytest.approx(0.1 * NBETA) and not plain.settled
    assert plain.reason == "gamma/nbeta = 0.03 failed (1 chain(s) diverged); took the last usable, gamma/nbeta = 0.1"
    skipping = calibrate_gamma(_flaky(run, (0.03, 0.01), chains_dropped=1), nbeta=NBETA, epsilon=1e-5, skip_failures=True)
    assert skipping.gamma == pytest.approx(0.001 * NBETA) and skipping.settled


def test_a_carried_gamma_is_kept_only_when_its_chains_pass() -> None:
    run, _ = _pilot()
    good = run(20.0)
    kept = carried_gamma(good, nbeta=NBETA, epsilon=1e-5)
    assert kept is not None and kept.carried and kept.gamma == 20.0
    drifting = GammaPilot(gamma=20.0, stats=PilotStats(**{**good.stats.__dict__, "drift_z": 9.0}),
                          llc_per_chain=good.llc_per_chain, dist_ratio=1.0)
    assert carried_gamma(drifting, nbeta=NBETA, epsilon=1e-5) is None


def test_config_accepts_auto_and_refuses_other_words() -> None:
    assert SGLDConfig(gamma="auto", gamma_hint=5.0).gamma == "auto"
    with pytest.raises(ValueError, match="SGLDConfig.gamma='strong' is invalid"):
        SGLDConfig(gamma="strong")
    with pytest.raises(ValueError, match="SGLDConfig.gamma_hint=-1.0 is invalid"):
        SGLDConfig(gamma="auto", gamma_hint=-1.0)


def test_estimate_llc_scans_gamma_and_keeps_a_good_hint() -> None:
    # A regular model (lambda = d/2 = 4.5 at its least-squares fit), the scan kept short by a step
    # of eps*nbeta = 0.1 and a pilot budget of 3,000 steps (g = 0.003 would need ~6,870: not run).
    model, data = linear_regression(n=2_000, d_in=2, d_out=3, seed=3)
    nbeta = 2_000 / math.log(2_000)
    base = dict(epsilon=0.1 / nbeta, gamma="auto", num_chains=4, num_draws=200, num_burnin=0, batch_size=100, seed=1,
                gamma_pilot_steps=3_000)
    res = estimate_llc(model, half_mse, data, config=SGLDConfig(**base))
    cal = res.gamma_calibration
    assert cal is not None and not cal["carried"] and len(cal["points"]) >= 2
    g = cal["gamma"] / nbeta
    assert res.diagnostics["gamma"] == cal["gamma"] and any(g == pytest.approx(x) for x in GAMMA_GRID)
    assert all(p["dist_ratio"] is not None and p["usable"] for p in cal["points"]), cal
    # The run at the pick relaxes as long as its pilot did (a weaker gamma relaxes more slowly).
    assert [p["ratio"] for p in cal["points"]] == [0.1, 0.03, 0.01] and "would need 68" in cal["reason"]
    assert res.diagnostics["num_burnin"] == max(burnin_for(0, 0.1), relax_steps(0.1, g))
    assert abs(res.llc_mean / 4.5 - 1) < 0.25, (res.llc_mean, cal["reason"])
    # The picked gamma's pilot (same seed and step, 200 draws after at least the run's burn-in) is
    # the run: its lambda_hat is the result, not a rerun of its first draws.
    picked = [p for p in cal["points"] if p["ratio"] == pytest.approx(g)]
    assert len(picked) == 1 and res.llc_mean == pytest.approx(picked[0]["llc_mean"], rel=1e-12)
    assert "gamma_pilot_reused" in res.notes and res.diagnostics["gamma_calibration_chain_steps"] > 0
    # More draws than the pilot holds: the run at the pick is sampled afresh at the same pick.
    longer = estimate_llc(model, half_mse, data, config=SGLDConfig(**{**base, "num_draws": 400}))
    assert longer.gamma_calibration["gamma"] == cal["gamma"] and "gamma_pilot_reused" not in longer.notes
    assert longer.loss_trace.shape == (4, 400) and res.loss_trace.shape[1] >= 200
    hinted = estimate_llc(model, half_mse, data, config=SGLDConfig(**{**base, "gamma_hint": cal["gamma"]}))
    assert hinted.gamma_calibration["carried"] is True and hinted.diagnostics["gamma_calibration_chain_steps"] == 0
    assert hinted.diagnostics["gamma"] == cal["gamma"] and "carried" in hinted.notes["gamma"]
    # A hint too weak to relax within the pilot budget at this step (2 / (0.1 * 1e-6) burn-in steps,
    # whose trace alone would take gigabytes) is not run: the scan decides, and the note says why.
    weak = estimate_llc(model, half_mse, data, config=SGLDConfig(**{**base, "gamma_hint": 1e-6 * nbeta}))
    assert weak.gamma_calibration["carried"] is False and weak.gamma_calibration["gamma"] == cal["gamma"]
    assert "not tried: at eps*nbeta*s = 0.1 it needs 2000000" in weak.notes["gamma_hint"] and weak.llc_mean == pytest.approx(res.llc_mean)
