"""The demo model: a 2-layer attention-only transformer (no MLPs), nanoGPT style.

This is the model of the induction-head literature (Elhage et al. 2021, Olsson et al.
2022): a previous-token head in layer 0 composes with an induction head in layer 1.
It is a regular Hugging Face model (config.json + model.safetensors) so the demo's
checkpoints load through the same path as GPT-2 or Pythia. The forward pass is plain
matmuls + a causal mask + softmax, with no data-dependent Python control flow and no
in-place ops, so torch.func.functional_call + vmap over stacked parameters works.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput


class AttnOnlyConfig(PretrainedConfig):
    model_type = "llc-attn-only"

    def __init__(self, vocab_size: int = 64, n_positions: int = 64, d_model: int = 64, n_heads: int = 4,
                 n_layers: int = 2, layer_norm: bool = True, initializer_range: float = 0.02,
                 **kwargs: object) -> None:
        self.vocab_size = vocab_size
        self.n_positions = n_positions
        self.d_model = d_model
        self.n_heads = n_heads
        self.n_layers = n_layers
        self.layer_norm = layer_norm
        self.initializer_range = initializer_range
        super().__init__(**kwargs)


class Attention(nn.Module):
    def __init__(self, config: AttnOnlyConfig) -> None:
        super().__init__()
        assert config.d_model % config.n_heads == 0, "d_model must be a multiple of n_heads"
        self.n_heads = config.n_heads
        self.ln = nn.LayerNorm(config.d_model) if config.layer_norm else nn.Identity()
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.out = nn.Linear(config.d_model, config.d_model)
        mask = torch.tril(torch.ones(config.n_positions, config.n_positions, dtype=torch.bool))
        self.register_buffer("causal_mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln(x)).split(C, dim=-1)
        q = q.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2)   # (B, H, T, hd)
        k = k.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2)
        v = v.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(C // self.n_heads)
        scores = scores.masked_fill(~self.causal_mask[:T, :T], float("-inf"))
        pattern = F.softmax(scores, dim=-1)                                  # (B, H, T, T)
        y = (pattern @ v).transpose(1, 2).reshape(B, T, C)
        return self.out(y), pattern


class AttnOnlyForCausalLM(PreTrainedModel):
    config_class = AttnOnlyConfig
    base_model_prefix = "attn_only"
    _no_split_modules = ["Attention"]

    def __init__(self, config: AttnOnlyConfig) -> None:
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.d_model)
        self.wpe = nn.Embedding(config.n_positions, config.d_model)
        self.layers = nn.ModuleList(Attention(config) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(config.d_model) if config.layer_norm else nn.Identity()
        self.unembed = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        if isinstance(module, Attention):
            T = module.causal_mask.shape[0]
            module.causal_mask = torch.tril(torch.ones(T, T, dtype=torch.bool, device=module.causal_mask.device))

    def get_input_embeddings(self) -> nn.Module:
        return self.wte

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.wte = value

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None,
                output_attentions: bool = False, **kwargs: object) -> CausalLMOutput:
        T = input_ids.shape[-1]
        pos = torch.arange(T, device=input_ids.device)
        x = self.wte(input_ids) + self.wpe(pos)
        patterns = []
        for layer in self.layers:
            delta, pattern = layer(x)
            x = x + delta
            patterns.append(pattern)
        logits = self.unembed(self.ln_f(x))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                   ignore_index=-100)
        return CausalLMOutput(loss=loss, logits=logits,
                              attentions=tuple(patterns) if output_attentions else None)
