"""Helpers shared by the storage/data tests: tiny real checkpoints written with save_pretrained."""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import PreTrainedModel

from workers.models import AttnOnlyConfig, AttnOnlyForCausalLM
from workers.objectstore import open_store


def tiny_attn_only(seed: int = 0, vocab_size: int = 16, n_positions: int = 12) -> AttnOnlyForCausalLM:
    torch.manual_seed(seed)
    return AttnOnlyForCausalLM(AttnOnlyConfig(vocab_size=vocab_size, n_positions=n_positions, d_model=16, n_heads=2))


def upload_dir(local: Path, uri: str) -> None:
    store = open_store(uri)
    for path in sorted(local.rglob("*")):
        if path.is_file():
            store.upload(path, path.relative_to(local).as_posix())


def upload_model(model: PreTrainedModel, uri: str, tmp: Path) -> None:
    """save_pretrained + upload, as a training job would write a checkpoint."""
    local = tmp / uri.replace("/", "_").replace(":", "")
    model.save_pretrained(local)
    upload_dir(local, uri)
