"""Load a checkpoint as a Hugging Face causal LM: offline, safetensors only, no remote code.

Checkpoints come from training jobs we do not control, so nothing here executes code
or unpickles data from them: `trust_remote_code` is never set, `.bin` pickles are
refused, and missing weights (which transformers would silently re-initialise) are an error.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel
from transformers.utils import logging as hf_logging

import workers.models  # noqa: F401 - registers the project's own architectures with the Auto classes
from workers.cache import CacheError, LocalCache
from workers.checkpoints import WEIGHTS_FILE, CheckpointError, CheckpointRef, inspect_checkpoint
from workers.objectstore import ObjectStoreError

log = logging.getLogger(__name__)


def _check_dir(local_dir: Path, uri: str) -> list[Path]:
    """The safetensors files of a model directory, each with a readable header."""
    config = local_dir / "config.json"
    if not config.is_file():
        raise CheckpointError(f"Checkpoint {uri} has no config.json; it is not a Hugging Face model directory.")
    try:
        json.loads(config.read_text())
    except ValueError:
        raise CheckpointError(f"The config.json of checkpoint {uri} is not valid JSON; re-save the checkpoint.") from None
    weights = sorted(local_dir.glob("*.safetensors"))
    if not weights:
        pickles = [p.name for p in local_dir.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl")]
        if pickles:
            raise CheckpointError(f"Checkpoint {uri} holds only pickled weights ({pickles[0]}), which are never "
                                  "loaded; re-save it with save_pretrained(..., safe_serialization=True).")
        raise CheckpointError(f"Checkpoint {uri} has no {WEIGHTS_FILE}; it is half-written or not a model.")
    for path in weights:
        try:
            with safe_open(str(path), framework="pt") as f:
                list(f.keys())
        except Exception as exc:  # safetensors raises its own error types for bad headers
            raise CheckpointError(f"The weights file {path.name} of checkpoint {uri} is not a valid safetensors "
                                  f"file ({type(exc).__name__}); re-upload the checkpoint.") from None
    return weights


def architecture_checkpoints(config: Mapping[str, Any]) -> bool | None:
    """Whether the causal-LM class transformers builds for this config.json supports activation
    checkpointing (a sweep asking for it is refused at submit otherwise); None for an architecture
    neither transformers nor workers.models knows (loading refuses those with its own sentence)."""
    try:
        model_class = AutoModelForCausalLM._model_mapping[type(AutoConfig.for_model(str(config.get("model_type"))))]
    except (KeyError, ValueError):
        return None
    return bool(getattr(model_class, "supports_gradient_checkpointing", False))


def load_model_dir(local_dir: Path | str, *, uri: str | None = None, device: str | torch.device = "cpu",
                   dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """`AutoModelForCausalLM.from_pretrained(local_dir)`, checked; the model is in eval mode."""
    local_dir = Path(local_dir)
    uri = uri or local_dir.as_uri()
    _check_dir(local_dir, uri)
    try:
        config = AutoConfig.from_pretrained(local_dir, local_files_only=True, trust_remote_code=False)
    except (ValueError, KeyError) as exc:
        model_type = json.loads((local_dir / "config.json").read_text()).get("model_type")
        raise CheckpointError(f"Checkpoint {uri} has an unknown architecture (model_type={model_type!r}); "
                              "only architectures built into transformers or registered by workers.models "
                              "load, never remote code.") from exc
    bar_was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()   # one bar per job in a worker's log is noise
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            local_dir, config=config, local_files_only=True, use_safetensors=True, trust_remote_code=False,
            dtype=dtype, output_loading_info=True)
    except ValueError as exc:
        if "Unrecognized configuration class" in str(exc):
            raise CheckpointError(f"Checkpoint {uri} is a {type(config).__name__}, which has no causal-LM "
                                  "head in transformers; use a causal language model checkpoint.") from exc
        raise CheckpointError(f"Checkpoint {uri} could not be loaded: {str(exc).splitlines()[0]}") from exc
    except (OSError, RuntimeError) as exc:
        raise CheckpointError(f"Checkpoint {uri} could not be loaded ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}); re-save it.") from exc
    finally:
        if bar_was_on:
            hf_logging.enable_progress_bar()
    missing = sorted(info.get("missing_keys") or [])
    mismatched = list(info.get("mismatched_keys") or [])
    if missing or mismatched:
        what = f"missing weights {missing[:3]}" if missing else f"mis-shaped weights {mismatched[:3]}"
        raise CheckpointError(f"Checkpoint {uri} does not match its config.json ({what}); re-save it with "
                              "save_pretrained.")
    model.eval()
    return model.to(device)


def load_checkpoint(ref: CheckpointRef | str, *, cache: LocalCache | None = None,
                    device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32) -> tuple[PreTrainedModel, CheckpointRef]:
    """Pull a checkpoint through the local cache and load it."""
    if isinstance(ref, str):
        ref = inspect_checkpoint(ref)
    cache = cache or LocalCache()
    try:
        local = cache.fetch(ref.uri, ref.fingerprint, ref.files)
    except (ObjectStoreError, CacheError) as exc:
        raise CheckpointError(str(exc)) from exc
    return load_model_dir(local, uri=ref.uri, device=device, dtype=dtype), ref

