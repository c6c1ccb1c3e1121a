"""The fast paths (vectorized, sequential, compiled, no per-step sync) follow the plain reference loop."""
from __future__ import annotations

import numpy as np
import pytest

from workers.llc import SGLDConfig, estimate_llc
from workers.llc.reference import reference_llc

from .llc_toy_models import half_mse, linear_regression


def _cfg(**kw) -> SGLDConfig:
    base = dict(epsilon=1e-4, gamma=100.0, num_chains=3, num_draws=40, num_burnin=20, batch_size=64, seed=3)
    base.update(kw)
    return SGLDConfig(**base)


@pytest.mark.parametrize("method", ["sgld", "rmsprop_sgld"])
@pytest.mark.parametrize("vectorize", [True, False])
def test_fast_paths_follow_the_reference_loop(method: str, vectorize: bool) -> None:
    # Same seed: the same batches and noise, so the same chains up to float rounding of
    # batched vs single matmuls (and the per-item baseline table vs direct batch means).
    model, data = linear_regression(n=2_000, d_in=5, d_out=3, seed=4)
    cfg = _cfg(method=method, vectorize=vectorize, epsilon=1e-4 if method == "sgld" else 1e-6)
    ref = reference_llc(model, half_mse, data, config=cfg)
    fast = estimate_llc(model, half_mse, data, config=cfg)
    assert fast.path == ("vectorized" if vectorize else "sequential")
    np.testing.assert_allclose(fast.loss_trace, ref.loss_trace, rtol=2e-5)
    np.testing.assert_allclose(fast.baseline_trace, ref.baseline_trace, rtol=2e-5)
    np.testing.assert_allclose(fast.llc_per_chain, ref.llc_per_chain, rtol=1e-3, atol=1e-3)


def test_compiled_path_follows_the_reference_loop() -> None:
    model, data = linear_regression(n=2_000, d_in=5, d_out=3, seed=4)
    cfg = _cfg(compile=True, vectorize=False, num_chains=2, num_draws=20, num_burnin=5)
    ref = reference_llc(model, half_mse, data, config=cfg)
    fast = estimate_llc(model, half_mse, data, config=cfg)
    assert fast.diagnostics["compiled"], fast.notes
    np.testing.assert_allclose(fast.loss_trace, ref.loss_trace, rtol=1e-4)
    np.testing.assert_allclose(fast.llc_per_chain, ref.llc_per_chain, rtol=1e-2, atol=1e-2)
