"""Paired vs full vs K-batch baselines: same chains, same mean, paired has the lowest spread."""
from __future__ import annotations

import math

import numpy as np

from workers.llc import SGLDConfig, estimate_llc

from .llc_toy_models import half_mse, linear_regression


def test_paired_baseline_agrees_with_full_and_has_lower_variance() -> None:
    # n = 100k, 4 chains x 200 draws x batch 256 touch half an epoch, so the batches' mean
    # L_m(w*) misses L_n(w*) by ~nbeta * sigma / sqrt(51200) ~ 60: that noise is what
    # "paired" cancels. Same seed => identical chains, only the subtraction differs.
    model, data = linear_regression(n=100_000, d_in=10, d_out=5, seed=3)
    runs = {}
    for baseline in ("paired", "full", 8):
        cfg = SGLDConfig(epsilon=1e-5, gamma=10.0, num_chains=4, num_draws=200, num_burnin=100,
                         batch_size=256, seed=4, baseline=baseline)
        runs[baseline] = estimate_llc(model, half_mse, data, config=cfg)
    paired, full, kbatch = runs["paired"], runs["full"], runs[8]
    np.testing.assert_array_equal(paired.loss_trace, full.loss_trace)
    assert paired.llc_std < 0.5 * full.llc_std, (paired.llc_per_chain, full.llc_per_chain)
    se = full.llc_std / math.sqrt(4)
    assert abs(paired.llc_mean - full.llc_mean) < 3 * se
    # The full-data baseline is the exact L_n(w*); 8 batches of 256 estimate it to ~1.6/sqrt(2048).
    assert abs(kbatch.baseline_loss - full.baseline_loss) < 4 * 1.6 / math.sqrt(2048)
    assert paired.baseline_trace.shape == paired.loss_trace.shape == (4, 200)
    assert np.all(full.baseline_trace == full.baseline_loss)


def test_paired_baselines_are_the_loss_at_w_star_on_each_chains_own_draw_batches() -> None:
    # Paired baselines are computed after the chains ran, from the recorded batch indices:
    # entry (c, d) must be L_m(w*) on exactly the batch chain c used at its d-th draw.
    from dataclasses import replace

    import torch

    from workers.llc.data import IndexStream, chain_generator

    model, data = linear_regression(n=3_000, d_in=4, d_out=2, seed=1)
    cfg = SGLDConfig(num_chains=3, num_draws=20, num_burnin=5, steps_between_draws=2, batch_size=100, seed=11)
    steps = [cfg.num_burnin + d * cfg.steps_between_draws for d in range(cfg.num_draws)]
    x, y = data.tensors
    want = np.zeros((3, cfg.num_draws))
    with torch.no_grad():
        for c in range(3):
            stream = IndexStream(3_000, 100, chain_generator(11, c, 0))
            idx = [stream.next() for _ in range(cfg.num_steps)]
            want[c] = [float(half_mse(model, [x[idx[t]], y[idx[t]]])) for t in steps]
    for vectorize in (True, False):
        res = estimate_llc(model, half_mse, data, config=replace(cfg, vectorize=vectorize))
        assert res.path == ("vectorized" if vectorize else "sequential")
        np.testing.assert_allclose(res.baseline_trace, want, rtol=1e-5)
        assert res.baseline_loss == float(np.mean(want)) or abs(res.baseline_loss - np.mean(want)) < 1e-6
