"""Model architectures of this project; importing the package registers them with transformers' Auto classes."""
from __future__ import annotations

from transformers import AutoConfig, AutoModelForCausalLM

from workers.models.attn_only import AttnOnlyConfig, AttnOnlyForCausalLM

AutoConfig.register(AttnOnlyConfig.model_type, AttnOnlyConfig, exist_ok=True)
AutoModelForCausalLM.register(AttnOnlyConfig, AttnOnlyForCausalLM, exist_ok=True)

__all__ = ["AttnOnlyConfig", "AttnOnlyForCausalLM"]
