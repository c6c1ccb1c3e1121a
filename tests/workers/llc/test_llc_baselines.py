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

    model, data = linear_regression(n=3_000, d_in=4, d_out=2, seed=1)
    cfg = SGLDConfig(num_chains=3, num_draws=20, num_burnin=5, steps_between_draws=2, batch_size=100, seed=11)
    want = _paired_by_hand(model, half_mse, data, cfg)
    for vectorize in (True, False):
        res = estimate_llc(model, half_mse, data, config=replace(cfg, vectorize=vectorize))
        assert res.path == ("vectorized" if vectorize else "sequential")
        np.testing.assert_allclose(res.baseline_trace, want, rtol=1e-5)
        # n = 3,000 items < 3 chains x 20 draws x 100: looked up in the per-item table at w*.
        assert res.notes["baseline"] == "item_table" and res.diagnostics["baseline_item_table"]
        assert res.baseline_loss == float(np.mean(want)) or abs(res.baseline_loss - np.mean(want)) < 1e-6


def _paired_by_hand(model, loss_fn, data, cfg: SGLDConfig) -> np.ndarray:
    """L_m(w*) on each chain's draw batches, replaying the chains' own index streams."""
    import torch

    from workers.llc.data import IndexStream, chain_generator

    steps = [cfg.num_burnin + d * cfg.steps_between_draws for d in range(cfg.num_draws)]
    want = np.zeros((cfg.num_chains, cfg.num_draws))
    with torch.no_grad():
        for c in range(cfg.num_chains):
            stream = IndexStream(len(data), cfg.batch_size, chain_generator(cfg.seed, c, 0))
            idx = [stream.next() for _ in range(cfg.num_steps)]
            want[c] = [float(loss_fn(model, [t[idx[s]] for t in data.tensors])) for s in steps]
    return want


def test_a_loss_that_is_not_a_per_item_mean_gets_direct_paired_baselines() -> None:
    # The worst item's loss: no table of per-item losses can give it as a mean, so the
    # check batches refuse the table and every draw's batch is evaluated at w*.
    def worst_item(model, batch):
        x, y = batch
        return (0.5 * ((model(x) - y) ** 2).sum(-1)).max()

    model, data = linear_regression(n=2_000, d_in=4, d_out=2, seed=5)
    cfg = SGLDConfig(epsilon=1e-5, num_chains=2, num_draws=30, num_burnin=0, batch_size=50, seed=2)
    res = estimate_llc(model, worst_item, data, config=cfg)
    assert res.notes["baseline"].startswith("direct: loss_fn is not a mean of per-item losses")
    assert not res.diagnostics["baseline_item_table"]
    np.testing.assert_allclose(res.baseline_trace, _paired_by_hand(model, worst_item, data, cfg), rtol=1e-6)
    # The same data with the mean loss takes the table, and it gives the same baselines.
    res_mean = estimate_llc(model, half_mse, data, config=cfg)
    assert res_mean.notes["baseline"] == "item_table"
    np.testing.assert_allclose(res_mean.baseline_trace, _paired_by_hand(model, half_mse, data, cfg), rtol=1e-6)


def test_a_dataset_larger_than_the_draws_batches_gets_direct_paired_baselines() -> None:
    model, data = linear_regression(n=5_000, d_in=3, d_out=1, seed=6)
    cfg = SGLDConfig(epsilon=1e-5, num_chains=2, num_draws=10, num_burnin=0, batch_size=100, seed=3)
    res = estimate_llc(model, half_mse, data, config=cfg)        # 2 x 10 x 100 = 2,000 < 5,000 items
    assert res.notes["baseline"].startswith("direct: the dataset (5000 items)")
    np.testing.assert_allclose(res.baseline_trace, _paired_by_hand(model, half_mse, data, cfg), rtol=1e-6)


def test_a_weighted_mean_over_a_few_items_is_caught_by_the_check_batches() -> None:
    # Token-weighted losses where 2% of the items count half (as with a few padded sequences):
    # most batches look like per-item means, but the check batches (1/32 of the draws) meet the
    # odd ones, so the table is refused and the baselines stay exact.
    import torch
    from torch.utils.data import TensorDataset

    model, data = linear_regression(n=2_000, d_in=4, d_out=2, seed=9)
    x, y = data.tensors
    weights = torch.ones(2_000)
    weights[torch.randperm(2_000, generator=torch.Generator().manual_seed(0))[:40]] = 0.5
    weighted = TensorDataset(x, y, weights)

    def weighted_mean(m, batch):
        xb, yb, wb = batch
        per_item = 0.5 * ((m(xb) - yb) ** 2).sum(-1)
        return (wb * per_item).sum() / wb.sum()

    cfg = SGLDConfig(epsilon=1e-5, num_chains=4, num_draws=100, num_burnin=0, batch_size=32, seed=4)
    res = estimate_llc(model, weighted_mean, weighted, config=cfg)
    assert res.notes["baseline"].startswith("direct: loss_fn is not a mean of per-item losses")
    np.testing.assert_allclose(res.baseline_trace, _paired_by_hand(model, weighted_mean, weighted, cfg), rtol=1e-6)
