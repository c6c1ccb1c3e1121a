"""Tiny random models of each architecture family the component selectors know."""
from __future__ import annotations

import torch
from torch import nn
from transformers import (GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig,
                          LlamaForCausalLM, MistralConfig, MistralForCausalLM)

from workers.models.attn_only import AttnOnlyConfig, AttnOnlyForCausalLM

VOCAB = 48


def tiny(family: str, *, seed: int = 0) -> nn.Module:
    """A 2-layer, 4-head, width-32 model of `family` in eval mode (eager attention)."""
    torch.manual_seed(seed)
    if family == "llc-attn-only":
        model = AttnOnlyForCausalLM(AttnOnlyConfig(vocab_size=VOCAB, n_positions=16, d_model=32, n_heads=4, n_layers=2))
    elif family == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=16, n_embd=32, n_layer=2, n_head=4,
                                           attn_implementation="eager"))
    elif family == "gpt_neox":
        model = GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                                 num_attention_heads=4, intermediate_size=64,
                                                 max_position_embeddings=16, attn_implementation="eager"))
    elif family in ("llama", "mistral"):
        cfg_cls, model_cls = (LlamaConfig, LlamaForCausalLM) if family == "llama" else (MistralConfig, MistralForCausalLM)
        model = model_cls(cfg_cls(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2, intermediate_size=64, max_position_embeddings=16,
                                  attn_implementation="eager"))
    else:
        raise ValueError(family)
    with torch.no_grad():                      # non-trivial biases/norms so every slice matters
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


# The module whose input is the concatenation of the heads' outputs (B, T, heads * head_dim).
OUT_PROJ = {"llc-attn-only": "layers.{L}.out", "gpt2": "transformer.h.{L}.attn.c_proj",
            "gpt_neox": "gpt_neox.layers.{L}.attention.dense", "llama": "model.layers.{L}.self_attn.o_proj",
            "mistral": "model.layers.{L}.self_attn.o_proj"}
