"""Memory planning: chains and batches arranged to fit a budget, or a refusal naming the knob."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from workers.job import causal_lm_loss
from workers.llc import SGLDConfig, estimate_llc
from workers.llc.memory import MemoryEstimate, MemoryPlanError, plan_memory
from workers.llc.reference import reference_llc

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
        plan_memory(EST, num_chains=4, batch_size=8, budget=EST.peak(chains=1, batch=1, accumulate=True) - 1)


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


def test_one_chain_runs_in_the_models_own_parameters_and_leaves_them_as_they_were() -> None:
    model = tiny("gpt_neox")
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    first = next(model.parameters())
    first.requires_grad_(False)
    marker = torch.full_like(first, 7.0)
    first.grad = marker
    cfg = dict(epsilon=1e-3, gamma=100.0, num_chains=2, num_draws=5, num_burnin=2, batch_size=8, seed=4, vectorize=False)
    res = estimate_llc(model, causal_lm_loss, _Tokens(), config=SGLDConfig(**cfg))
    assert res.diagnostics["in_place_chain"] and res.path == "sequential"
    for k, v in model.named_parameters():
        assert torch.equal(v.detach(), before[k]), k
    assert not first.requires_grad and first.grad is marker
    assert all(p.requires_grad for p in list(model.parameters())[1:])
    # The reference loop's chains, and, budget tight, the same in micro-batches accumulated into
    # the same gradient buffer.
    ref = reference_llc(model, causal_lm_loss, _Tokens(), config=SGLDConfig(**cfg))
    np.testing.assert_allclose(res.loss_trace, ref.loss_trace, rtol=2e-5)
    need = res.diagnostics["memory_estimate_bytes"]
    tight = estimate_llc(model, causal_lm_loss, _Tokens(), config=SGLDConfig(**cfg, memory_bytes=need - 1))
    assert tight.diagnostics["in_place_chain"] and tight.diagnostics["micro_batches"] >= 2
    np.testing.assert_allclose(tight.loss_trace, res.loss_trace, rtol=1e-5)


def test_in_place_chain_needs_two_sampled_copies_fewer() -> None:
    copying = plan_memory(EST, num_chains=4, batch_size=8, budget=1 << 40, vectorize=False)
    in_place = plan_memory(replace(EST, in_place=True, chunked_noise=True), num_chains=4, batch_size=8,
                           budget=1 << 40, vectorize=False)
    assert copying.peak_bytes - in_place.peak_bytes == 2 * EST.sampled
    assert replace(EST, in_place=True).peak(chains=1, batch=4, accumulate=True) == \
        replace(EST, in_place=True).peak(chains=1, batch=4)          # micro-batches add into one gradient
    # A compiled chain returns its gradient concatenated from per-parameter ones: one copy more.
    assert replace(EST, compiled=True).peak(chains=1, batch=8) - EST.peak(chains=1, batch=8) == EST.sampled
