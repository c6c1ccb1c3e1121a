"""Rank-normalized R-hat and bulk/tail ESS agree with ArviZ and catch what plain split R-hat missed."""
from __future__ import annotations

import numpy as np
import pytest

from workers.llc.diagnostics import drift_z, ess_bulk, ess_tail, r_hat_bulk, rank_r_hat

array_stats = pytest.importorskip("arviz_stats.base").array_stats


def _chains(kind: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "iid":
        return rng.normal(size=(4, 500))
    if kind == "ar1":                       # slowly mixing AR(1), rho = 0.95
        x = np.zeros((4, 800))
        for t in range(1, 800):
            x[:, t] = 0.95 * x[:, t - 1] + rng.normal(size=4)
        return x
    if kind == "antithetic":                # negatively autocorrelated: ESS > draws
        x = np.zeros((3, 400))
        for t in range(1, 400):
            x[:, t] = -0.6 * x[:, t - 1] + rng.normal(size=3)
        return x
    if kind == "heavy":                     # Cauchy draws with ties
        return np.round(rng.standard_cauchy(size=(4, 300)), 1)
    if kind == "spread":                    # one chain with 10x the spread, same mean
        x = rng.normal(size=(4, 1000))
        x[0] *= 10
        return x
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["iid", "ar1", "antithetic", "heavy", "spread"])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_arviz(kind: str, seed: int) -> None:
    x = _chains(kind, seed)
    kw = dict(chain_axis=0, draw_axis=1)
    assert rank_r_hat(x) == pytest.approx(float(array_stats.rhat(x, method="rank", **kw)), rel=1e-10)
    assert ess_bulk(x) == pytest.approx(float(array_stats.ess(x, method="bulk", **kw)), rel=1e-10)
    assert ess_tail(x) == pytest.approx(float(array_stats.ess(x, method="tail", prob=0.05, **kw)), rel=1e-10)


def test_folded_r_hat_flags_a_chain_with_a_different_spread() -> None:
    x = _chains("spread", 0)
    assert r_hat_bulk(x) < 1.05           # the means agree: bulk (like BDA3 split R-hat) sees nothing
    assert rank_r_hat(x) > 1.1            # the tail R-hat on folded draws does


def test_antithetic_chains_give_the_ar1_ess() -> None:
    # AR(1) with rho = -0.6: ESS = S (1 - rho) / (1 + rho) = 4 S; the final even term keeps
    # the truncated sum from running far past it.
    x = _chains("antithetic", 0)
    assert 3.0 * x.size < ess_bulk(x) < 5.0 * x.size


def test_drift_between_halves() -> None:
    rng = np.random.default_rng(0)
    flat = rng.normal(size=(4, 400))
    ramp = flat + np.linspace(0, 3, 400)
    assert drift_z(flat) < 4
    assert drift_z(ramp) > 5


def test_undefined_inputs_are_nan() -> None:
    assert np.isnan(rank_r_hat(np.ones((2, 3))))
    assert np.isnan(ess_bulk(np.array([[1.0, np.nan, 2.0, 3.0, 4.0]])))
