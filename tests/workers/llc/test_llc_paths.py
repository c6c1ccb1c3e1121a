"""Vectorized vs sequential chains, reproducibility, divergence, restricted sampling."""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from workers.llc import SGLDConfig, estimate_llc

from .llc_toy_models import half_mse, linear_regression


def _cfg(**kw) -> SGLDConfig:
    base = dict(epsilon=1e-4, gamma=100.0, num_chains=4, num_draws=100, num_burnin=50, batch_size=128, seed=7)
    base.update(kw)
    return SGLDConfig(**base)


def test_vectorized_and_sequential_draw_the_same_chains() -> None:
    # Chain c's batches and noise come from its own generators, so both paths run the same
    # chains; only float rounding of batched vs single matmuls differs.
    model, data = linear_regression(n=5_000, d_in=6, d_out=3, seed=5)
    vec = estimate_llc(model, half_mse, data, config=_cfg(vectorize=True))
    seq = estimate_llc(model, half_mse, data, config=_cfg(vectorize=False))
    assert vec.path == "vectorized" and vec.diagnostics["vectorized"] is True
    assert seq.path == "sequential" and seq.diagnostics["vectorized"] is False
    np.testing.assert_allclose(vec.llc_per_chain, seq.llc_per_chain, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(vec.loss_trace, seq.loss_trace, rtol=1e-5)


def test_fixed_seed_reproduces_and_other_seed_differs() -> None:
    model, data = linear_regression(n=5_000, d_in=6, d_out=3, seed=5)
    a = estimate_llc(model, half_mse, data, config=_cfg())
    b = estimate_llc(model, half_mse, data, config=_cfg())
    c = estimate_llc(model, half_mse, data, config=_cfg(seed=8))
    np.testing.assert_array_equal(a.loss_trace, b.loss_trace)
    assert a.llc_per_chain == b.llc_per_chain
    assert not np.allclose(a.loss_trace, c.loss_trace)


class _Walker(nn.Module):
    """y = w x, plus a parameter u that only sets where the loss stops being finite."""

    def __init__(self, w: float) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w))
        self.u = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w * x


def _walker_loss(model: _Walker, batch: list[torch.Tensor]) -> torch.Tensor:
    # u random-walks freely (no gradient, gamma = 0): chains whose u leaves [-0.3, 0.3]
    # get an infinite loss, the others never notice.
    wall = torch.where(model.u.abs() < 0.3, 0.0, float("inf"))
    return half_mse(model, batch) + wall


def test_divergence_is_flagged_per_chain_without_poisoning_the_others() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2_000, generator=g)
    data = TensorDataset(x, 0.5 * x + torch.randn(2_000, generator=g))
    model = _Walker(0.5)
    cfg = SGLDConfig(epsilon=1e-4, gamma=0.0, num_chains=8, num_draws=400, num_burnin=0, batch_size=100, seed=3)
    vec = estimate_llc(model, _walker_loss, data, config=cfg)
    flags = np.array(vec.chain_diverged)
    assert 0 < flags.sum() < 8, flags          # sqrt(eps * 400) = 0.2 per unit: some cross 0.3
    assert vec.diverged and vec.diagnostics["diverged"] and vec.diagnostics["num_diverged"] == flags.sum()
    # Partial divergence is said in the result: how many chains were dropped, and a note why it matters.
    assert vec.diagnostics["chains_dropped"] == flags.sum() and vec.diagnostics["partially_diverged"] is True
    assert "dropped" in vec.notes["divergence"]
    per_chain = np.array(vec.llc_per_chain)
    assert np.isnan(per_chain[flags]).all() and np.isfinite(per_chain[~flags]).all()
    assert vec.llc_mean == per_chain[~flags].mean()
    # Each surviving chain equals the same chain run alone: nothing leaked across chains.
    seq = estimate_llc(model, _walker_loss, data, config=SGLDConfig(**{**cfg.__dict__, "vectorize": False}))
    assert seq.chain_diverged == vec.chain_diverged
    np.testing.assert_allclose(per_chain[~flags], np.array(seq.llc_per_chain)[~flags], rtol=1e-4)
    # Divergence is checked every few steps, yet each trace is NaN from its own divergent draw
    # on (the same draw on both paths) and kept before it.
    np.testing.assert_allclose(vec.loss_trace, seq.loss_trace, rtol=1e-4)
    np.testing.assert_allclose(vec.baseline_trace, seq.baseline_trace, rtol=1e-5)
    for c in np.flatnonzero(flags):
        bad = np.flatnonzero(np.isnan(vec.loss_trace[c]))
        assert bad.size and (bad == np.arange(bad[0], cfg.num_draws)).all()
        assert np.isfinite(vec.loss_trace[c, :bad[0]]).all()


def test_huge_step_size_diverges_every_chain_and_reports_nan() -> None:
    model, data = linear_regression(n=2_000, d_in=4, d_out=2)
    res = estimate_llc(model, half_mse, data, config=_cfg(epsilon=1.0, num_draws=50, num_burnin=0))
    assert res.diverged and res.diagnostics["num_diverged"] == 4
    assert math.isnan(res.llc_mean) and all(math.isnan(v) for v in res.llc_per_chain)


def test_restricted_sampling_keeps_frozen_parameters_bit_identical() -> None:
    model, data = linear_regression(n=10_000, d_in=4, d_out=2, seed=6)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen_bias: list[torch.Tensor] = []
    seen_weight: list[torch.Tensor] = []

    def loss_fn(m: nn.Linear, batch: list[torch.Tensor]) -> torch.Tensor:
        seen_bias.append(m.bias.detach().clone())
        if not torch._C._functorch.is_batchedtensor(m.weight):
            seen_weight.append(m.weight.detach().clone())
        return half_mse(m, batch)

    model.train()
    cfg = SGLDConfig(epsilon=3e-5, gamma=1.0, num_chains=4, num_draws=600, num_burnin=200, batch_size=1000,
                     seed=9, sample_params=("weight",), vectorize=False)
    res = estimate_llc(model, loss_fn, data, config=cfg)
    assert res.diagnostics["num_sampled_params"] == 8
    assert all(torch.equal(b, before["bias"]) for b in seen_bias)
    assert any(not torch.equal(w, before["weight"]) for w in seen_weight)
    # Only the 8 weights are sampled: lambda = 8/2 = 4 (vs 5 for all 10 parameters);
    # 4 chains x 600 draws, standard error ~7%, same bias budget as the regular test.
    assert abs(res.llc_mean - 4.0) < 0.8, res.llc_per_chain
    # The model is left unchanged, including its training mode.
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    vec = estimate_llc(model, half_mse, data, config=SGLDConfig(**{**cfg.__dict__, "vectorize": True, "num_draws": 50}))
    assert vec.path == "vectorized" and vec.diagnostics["num_sampled_params"] == 8


def test_mala_acceptance_is_high_for_small_steps_and_progress_reaches_total() -> None:
    model, data = linear_regression(n=5_000, d_in=4, d_out=2)
    calls: list[tuple[int, int]] = []
    res = estimate_llc(model, half_mse, data, config=_cfg(epsilon=1e-5, mala=True),
                       progress=lambda done, total: calls.append((done, total)))
    acc = res.diagnostics["mala_acceptance"]
    assert 0.5 < acc <= 1.0
    total = 4 * _cfg().num_steps
    assert calls[-1] == (total, total) and all(t == total for _, t in calls)
    assert res.diagnostics["steps_per_second"] > 0
    assert 0.0 <= res.diagnostics["frac_draws_below_init"] <= 1.0
