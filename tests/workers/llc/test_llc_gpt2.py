"""The estimator on a tiny Hugging Face GPT-2 (random init) with the causal LM loss."""
from __future__ import annotations

import math

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from workers.llc import SGLDConfig, estimate_llc

from .llc_toy_models import DictTokens


def _causal_lm_loss(model: GPT2LMHeadModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    ids = batch["input_ids"]
    return model(input_ids=ids, labels=ids).loss


def test_tiny_gpt2_gives_a_finite_llc_on_whichever_path_runs() -> None:
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2,
                     resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1)
    model = GPT2LMHeadModel(cfg)
    model.train()   # dropout on: the estimator must run the model in eval mode and restore this
    tokens = torch.randint(0, 64, (256, 16), generator=torch.Generator().manual_seed(1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sampler = SGLDConfig(epsilon=1e-4, gamma=100.0, num_chains=2, num_draws=10, num_burnin=5, batch_size=16, seed=0)
    res = estimate_llc(model, _causal_lm_loss, DictTokens(tokens), config=sampler)
    assert res.path in ("vectorized", "sequential")
    assert res.diagnostics["vectorized"] == (res.path == "vectorized")
    if res.path == "sequential":
        assert res.fallback_reason   # an automatic fallback says why
    assert math.isfinite(res.llc_mean) and not res.diverged
    assert res.loss_trace.shape == (2, 10)
    assert abs(res.init_loss - math.log(64)) < 0.5          # random init: ~uniform predictions
    assert model.training
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    # Restricting to one block's attention samples only those weights.
    attn = estimate_llc(model, _causal_lm_loss, DictTokens(tokens),
                        config=SGLDConfig(**{**sampler.__dict__, "sample_params": ("transformer.h.0.attn.*",),
                                             "vectorize": False}))
    assert attn.diagnostics["num_sampled_params"] == sum(
        p.numel() for n, p in model.named_parameters() if n.startswith("transformer.h.0.attn."))
    assert math.isfinite(attn.llc_mean)
