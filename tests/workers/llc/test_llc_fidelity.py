"""Unbiased draws, refused sum losses, float64 losses, partial divergence, L_n(w*)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from workers.llc import SGLDConfig, estimate_llc
from workers.llc.diagnostics import ess_bulk
from workers.llc.reference import reference_llc

from .llc_toy_models import half_mse, linear_regression, sum_of_vectors


def test_paired_minibatch_estimate_matches_the_exact_full_data_estimate() -> None:
    # Per draw, d = nbeta [(L_m(w_t) - L_m(w*)) - (L_n(w_t) - L_n(w*))]. Batches drawn with
    # replacement do not depend on w_t, so E[d] = 0: the mean of d stays within 2 standard
    # errors of 0 (the audit's epoch sampler was 5 standard errors off on a regression).
    model, data = linear_regression(n=4_000, d_in=4, d_out=2, seed=3)
    cfg = SGLDConfig(epsilon=1e-4, gamma=100.0, num_chains=4, num_draws=300, num_burnin=50, batch_size=100, seed=5)
    ref = reference_llc(model, half_mse, data, config=cfg, exact=True)
    paired = ref.nbeta * (ref.loss_trace - ref.baseline_trace)
    exact = ref.nbeta * (ref.exact_trace - ref.exact_wstar)
    d = paired - exact
    se = d.std(ddof=1) / math.sqrt(ess_bulk(d))
    assert abs(d.mean()) <= 2 * se, (d.mean(), se)
    assert exact.mean() > 0 and abs(paired.mean() - exact.mean()) < 0.1 * exact.mean()


def test_a_summed_loss_is_refused_in_one_sentence() -> None:
    model, data = linear_regression(n=1_000, d_in=3, d_out=2)

    def summed(m, batch):
        return half_mse(m, batch) * batch[0].shape[0]

    with pytest.raises(ValueError, match=r"loss_fn returns a sum over the batch .* reduction='mean'"):
        estimate_llc(model, summed, data, config=SGLDConfig(num_draws=5, num_burnin=0, batch_size=32))


def test_float64_models_keep_float64_losses() -> None:
    model, data = linear_regression(n=1_000, d_in=3, d_out=2)
    model = model.double()
    data = torch.utils.data.TensorDataset(*(t.double() for t in data.tensors))
    res = estimate_llc(model, half_mse, data, config=SGLDConfig(num_chains=2, num_draws=20, num_burnin=5, batch_size=32))
    rounded = res.loss_trace.astype(np.float32).astype(np.float64)
    assert np.any(res.loss_trace != rounded)            # not float32 values
    assert not np.any(res.baseline_trace != res.baseline_trace.astype(np.float64))


def test_loss_wstar_is_the_full_data_loss() -> None:
    model, data = sum_of_vectors(n=2_000, k=3)
    with torch.no_grad():
        full = float(half_mse(model, data.tensors))
    # 4 x 100 draws of 16 items > n: the per-item table at w* is used, and its mean is L_n(w*).
    res = estimate_llc(model, half_mse, data, config=SGLDConfig(num_chains=4, num_draws=100, num_burnin=0, batch_size=16))
    assert res.notes["loss_wstar"].startswith("exact") and res.loss_wstar == pytest.approx(full, rel=1e-5)
    big = estimate_llc(model, half_mse, data, config=SGLDConfig(num_chains=1, num_draws=5, num_burnin=0, batch_size=16))
    assert big.notes["loss_wstar"].startswith("estimate") and math.isfinite(big.loss_wstar)
