"""Activation checkpointing: the same chains in fewer saved activations, the model put back after."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from workers.job import causal_lm_loss
from workers.llc import SGLDConfig, estimate_llc
from workers.llc.memory import MemoryPlanError

from .llc_family_models import tiny
from .test_llc_component_sampling import _Tokens


def _cfg(**kw) -> SGLDConfig:
    return SGLDConfig(**{**dict(epsilon=1e-3, gamma=100.0, num_chains=2, num_draws=6, num_burnin=2, batch_size=8,
                                seed=3), **kw})


def _state(model: torch.nn.Module) -> dict:
    """Everything the estimate may touch: modes, checkpointing attributes, hooks, values."""
    mods = {name: (m.training, m.__dict__.get("gradient_checkpointing"), "_gradient_checkpointing_func" in m.__dict__,
                   len(m._forward_hooks), len(m._forward_pre_hooks)) for name, m in model.named_modules()}
    return {"modules": mods, "values": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "req": {k: p.requires_grad for k, p in model.named_parameters()},
            "on": model.is_activation_checkpointing}


@pytest.mark.parametrize("sample", ["all", "l1h2"])     # in place (whole tensors) / functional_call (a head)
def test_checkpointed_chains_match_plain_ones_in_fewer_activation_bytes(sample: str) -> None:
    model = tiny("gpt_neox")
    plain = estimate_llc(model, causal_lm_loss, _Tokens(), config=_cfg(sample_params=sample))
    ckpt = estimate_llc(model, causal_lm_loss, _Tokens(), config=_cfg(sample_params=sample, activation_checkpointing=True))
    # The backward recomputes the same forward with the same ops: same trajectory up to float
    # reassociation (fp32, 8 SGLD steps); lambda_hat agrees as closely.
    np.testing.assert_allclose(ckpt.loss_trace, plain.loss_trace, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ckpt.llc_per_chain, plain.llc_per_chain, rtol=1e-4, atol=1e-5)
    assert ckpt.path == "sequential" and ckpt.diagnostics["activation_checkpointing"]
    assert not plain.diagnostics["activation_checkpointing"]
    # The plan's probe: fewer saved-activation bytes per item with checkpointing on.
    assert 0 < ckpt.diagnostics["memory_activations_per_item"] < plain.diagnostics["memory_activations_per_item"]


def test_model_comes_back_as_it_was() -> None:
    model = tiny("gpt_neox")
    before = _state(model)
    estimate_llc(model, causal_lm_loss, _Tokens(), config=_cfg(activation_checkpointing=True))
    after = _state(model)
    assert after["modules"] == before["modules"] and after["req"] == before["req"] and not after["on"]
    for k, v in before["values"].items():
        assert torch.equal(after["values"][k], v), k
    # A model that already checkpointed (with its own settings) keeps them.
    model.activation_checkpointing_enable()
    model.train()
    on_before = _state(model)
    estimate_llc(model, causal_lm_loss, _Tokens(), config=_cfg(activation_checkpointing=True))
    assert _state(model)["modules"] == on_before["modules"] and model.is_activation_checkpointing


def test_model_without_support_is_refused_in_one_sentence() -> None:
    model = tiny("llc-attn-only")
    assert not getattr(model, "supports_gradient_checkpointing", False)
    with pytest.raises(ValueError, match=r"^SGLDConfig.activation_checkpointing=True needs a model with activation "
                                         r"checkpointing .* set activation_checkpointing=False\.$"):
        estimate_llc(model, causal_lm_loss, _Tokens(), config=_cfg(activation_checkpointing=True))
    with pytest.raises(ValueError, match="cannot combine with vectorize=True"):
        SGLDConfig(activation_checkpointing=True, vectorize=True)


def test_refusal_names_checkpointing_where_it_would_help() -> None:
    model = tiny("gpt_neox")
    res = estimate_llc(model, causal_lm_loss, _Tokens(), config=_cfg(num_chains=1, num_draws=2, num_burnin=0,
                                                                     batch_size=1, sample_params="l1h2"))
    weights_and_state = res.diagnostics["memory_estimate_bytes"]
    with pytest.raises(MemoryPlanError, match="switch on activation_checkpointing"):
        estimate_llc(model, causal_lm_loss, _Tokens(), config=_cfg(sample_params="l1h2",
                                                                   memory_bytes=weights_and_state - 1))
