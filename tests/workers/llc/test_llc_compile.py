"""compile=True: the same chains as eager (up to float reassociation), or eager with the reason."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from workers.llc import SGLDConfig, estimate_llc

from .llc_toy_models import half_mse, linear_regression


@pytest.mark.parametrize("vectorize", [True, False])
def test_compiled_steps_follow_the_eager_chains(vectorize: bool) -> None:
    model, data = linear_regression(n=2_000, d_in=6, d_out=3, seed=7)
    cfg = SGLDConfig(epsilon=1e-4, gamma=100.0, num_chains=2, num_draws=40, num_burnin=10, batch_size=64, seed=1,
                     vectorize=vectorize)
    eager = estimate_llc(model, half_mse, data, config=cfg)
    compiled = estimate_llc(model, half_mse, data, config=replace(cfg, compile=True))
    assert compiled.path == eager.path == ("vectorized" if vectorize else "sequential")
    assert compiled.diagnostics["compiled"] and not eager.diagnostics["compiled"]
    assert compiled.diagnostics["compile_time_s"] > 0 and "compile" not in compiled.notes
    # Same batches and noise; fused kernels may round differently, and SGLD's chains carry that
    # along, so the traces agree to float32 precision, not bit for bit.
    np.testing.assert_allclose(compiled.loss_trace, eager.loss_trace, rtol=1e-4)
    np.testing.assert_allclose(compiled.llc_per_chain, eager.llc_per_chain, rtol=1e-3)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_without_a_working_cpp_compiler_the_steps_run_eagerly_and_say_why() -> None:
    # A real failure of torch.compile's CPU backend: its C++ compiler does not exist.
    import torch._inductor.config as inductor_config

    model, data = linear_regression(n=1_000, d_in=5, d_out=5, seed=8)     # a shape no other test compiles
    cfg = SGLDConfig(epsilon=1e-4, num_chains=2, num_draws=20, num_burnin=0, batch_size=50, seed=2, vectorize=False)
    eager = estimate_llc(model, half_mse, data, config=cfg)
    torch._dynamo.reset()
    with inductor_config.patch({"cpp.cxx": (None, "/nonexistent/c++"), "fx_graph_cache": False,
                                "autotune_local_cache": False}), pytest.warns(UserWarning, match="torch.compile failed"):
        res = estimate_llc(model, half_mse, data, config=replace(cfg, compile=True))
    torch._dynamo.reset()
    assert not res.diagnostics["compiled"]
    assert res.notes["compile"]
    np.testing.assert_array_equal(res.loss_trace, eager.loss_trace)


def test_auto_compile_picks_long_cpu_jobs_only() -> None:
    import math

    from workers.llc.estimator import _AUTO_COMPILE_FLOPS, _want_compile

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    long = SGLDConfig(num_chains=4, num_draws=200, num_burnin=0)          # 800 chain-steps
    per_step = math.ceil(_AUTO_COMPILE_FLOPS / 800)
    assert _want_compile(long, cpu, per_step) == (True, "auto: 1.0 TFLOP of SGLD steps on CPU")
    assert _want_compile(long, cpu, per_step // 2) == (False, None)
    assert _want_compile(long, cuda, None) == (False, None)                 # GPUs compile only when asked
    assert _want_compile(replace(long, compile=False), cpu, per_step) == (False, None)
    assert _want_compile(replace(long, compile=True), cpu, 1.0) == (True, None)
    # A small job on the estimator's own choice stays eager.
    model, data = linear_regression(n=500, d_in=3, d_out=1, seed=3)
    res = estimate_llc(model, half_mse, data, config=SGLDConfig(num_chains=2, num_draws=10, batch_size=20))
    assert not res.diagnostics["compiled"] and "compile" not in res.notes
