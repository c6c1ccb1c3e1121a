"""Memory planning: chains and batches arranged to fit a budget, or a refusal naming the knob."""
from __future__ import annotations

import numpy as np
import pytest

from workers.job import causal_lm_loss
from workers.llc import SGLDConfig, estimate_llc
from workers.llc.memory import MemoryEstimate, MemoryPlanError, plan_memory

from .llc_family_models import tiny
from .test_llc_component_sampling import _Tokens

MB = 1 << 20
EST = MemoryEstimate(weights=100 * MB, sampled=10 * MB, activations_per_item=2 * MB, largest_per_item=MB)


def test_plan_prefers_all_chains_then_chunks_then_one_then_micro_batches() -> None:
    need = {c: EST.peak(chains=c, batch=8) for c in (1, 2, 4)}
    assert plan_memory(EST, num_chains=4, batch_size=8, budget=need[4]).chains_per_group == 4
    chunked = plan_memory(EST, num_chains=4, batch_size=8, budget=need[4] - 1)
    assert chunked.chains_per_group == 3 and chunked.micro_batches == 1
    assert plan_memory(EST, num_chains=4, batch_size=8, budget=need[2]).chains_per_group == 2
    micro = plan_memory(EST, num_chains=4, batch_size=8, budget=need[1] - 1)
    assert (micro.chains_per_group, micro.micro_batches) == (1, 2) and micro.peak_bytes < need[1]
    assert plan_memory(EST, num_chains=4, batch_size=8, budget=need[4], vectorize=False).chains_per_group == 1


def test_plan_refuses_in_one_sentence_naming_the_knob() -> None:
    with pytest.raises(MemoryPlanError, match=r"more than the 0\.10 GiB available; sample fewer parameters"):
        plan_memory(EST, num_chains=4, batch_size=8, budget=100 * MB)
    with pytest.raises(MemoryPlanError, match="shorten the sequences"):
        plan_memory(EST, num_chains=4, batch_size=8, budget=EST.peak(chains=1, batch=1) - 1)


def test_gradient_accumulation_runs_the_same_chains_in_less_memory() -> None:
    model = tiny("gpt2")
    cfg = dict(epsilon=1e-3, gamma=100.0, num_chains=2, num_draws=5, num_burnin=2, batch_size=8, seed=4,
               vectorize=False, sample_params="l0h1+l1.mlp")
    full = estimate_llc(model, causal_lm_loss, _Tokens(), config=SGLDConfig(**cfg))
    assert full.diagnostics["micro_batches"] == 1
    need = full.diagnostics["memory_estimate_bytes"]
    tight = estimate_llc(model, causal_lm_loss, _Tokens(), config=SGLDConfig(**cfg, memory_bytes=need - 1))
    assert tight.diagnostics["micro_batches"] >= 2
    assert tight.diagnostics["memory_estimate_bytes"] < need
    np.testing.assert_allclose(tight.loss_trace, full.loss_trace, rtol=1e-5)
    with pytest.raises(MemoryPlanError, match="sample fewer parameters"):
        estimate_llc(model, causal_lm_loss, _Tokens(), config=SGLDConfig(**cfg, memory_bytes=1000))


def test_memory_plan_chunks_vectorized_chains() -> None:
    model = tiny("gpt2")
    cfg = dict(epsilon=1e-3, gamma=100.0, num_chains=4, num_draws=4, num_burnin=1, batch_size=4, seed=2,
               sample_params="l1h0")
    seq = estimate_llc(model, causal_lm_loss, _Tokens(), config=SGLDConfig(**cfg, vectorize=False))
    probe = estimate_llc(model, causal_lm_loss, _Tokens(), config=SGLDConfig(**cfg, vectorize=True))
    assert probe.diagnostics["chains_per_group"] == 4
    est_all = probe.diagnostics["memory_estimate_bytes"]
    res = estimate_llc(model, causal_lm_loss, _Tokens(), config=SGLDConfig(**cfg, memory_bytes=est_all - 1))
    assert res.path == "vectorized" and res.diagnostics["chains_per_group"] == 3     # groups [0, 1, 2], [3]
    assert res.diagnostics["memory_estimate_bytes"] < est_all
    np.testing.assert_allclose(res.loss_trace, seq.loss_trace, rtol=1e-5)
