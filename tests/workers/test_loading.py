"""Loading checkpoints from S3 through the cache: standard architectures, the demo model, bad files."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.func import functional_call, vmap
from transformers import (AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM,
                          LlamaConfig, LlamaForCausalLM, PreTrainedModel)

from tests.workers.storage_helpers import tiny_attn_only, upload_model
from workers.cache import LocalCache
from workers.checkpoints import CheckpointError, discover_checkpoints
from workers.loading import architecture_checkpoints, load_checkpoint
from workers.models import AttnOnlyForCausalLM
from workers.objectstore import open_store


def _tiny(kind: str) -> PreTrainedModel:
    torch.manual_seed(0)
    if kind == "gpt2":
        return GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=16, vocab_size=40, n_positions=16,
                                          bos_token_id=0, eos_token_id=0))
    if kind == "pythia":
        return GPTNeoXForCausalLM(GPTNeoXConfig(num_hidden_layers=2, num_attention_heads=2, hidden_size=16,
                                                intermediate_size=32, vocab_size=40, max_position_embeddings=16))
    if kind == "llama":
        return LlamaForCausalLM(LlamaConfig(num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                            hidden_size=16, intermediate_size=32, vocab_size=40,
                                            max_position_embeddings=16))
    return tiny_attn_only(vocab_size=40, n_positions=16)


@pytest.mark.parametrize("kind", ["gpt2", "pythia", "llama", "attn-only"])
def test_round_trip_through_s3_and_cache(kind: str, s3_bucket: str, tmp_path: Path) -> None:
    model = _tiny(kind).eval()
    run = f"s3://{s3_bucket}/runs/{kind}"
    upload_model(model, f"{run}/step-10", tmp_path)
    (ref,) = discover_checkpoints(run)
    cache = LocalCache(tmp_path / "cache")
    loaded, ref2 = load_checkpoint(ref, cache=cache)
    assert ref2 == ref and type(loaded) is type(model) and not loaded.training
    x = torch.randint(0, 40, (2, 12))
    with torch.no_grad():
        assert torch.allclose(model(x).logits, loaded(x).logits, atol=1e-6)
    again, _ = load_checkpoint(ref.uri, cache=cache)   # by URI; served from the cache
    assert len(cache.entries()) == 1
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), again.state_dict().values()))


def test_demo_model_is_registered_and_vmap_friendly() -> None:
    model = tiny_attn_only().eval()
    assert model.config.model_type == "llc-attn-only"
    x = torch.randint(0, 16, (3, 12))
    out = model(x, labels=x)
    assert out.logits.shape == (3, 12, 16)
    expected = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, 16), x[:, 1:].reshape(-1))
    assert torch.allclose(out.loss, expected)
    params = {k: v.detach() for k, v in model.named_parameters()}
    torch.manual_seed(1)
    stacked = {k: torch.stack([v + 0.05 * torch.randn_like(v) for _ in range(4)]) for k, v in params.items()}

    def loss(p: dict[str, torch.Tensor], batch: torch.Tensor) -> torch.Tensor:
        return functional_call(model, p, (batch,), {"labels": batch}).loss

    vmapped = vmap(loss, in_dims=(0, None))(stacked, x)
    looped = torch.stack([loss({k: v[i] for k, v in stacked.items()}, x) for i in range(4)])
    assert torch.allclose(vmapped, looped, atol=1e-6)
    grads = vmap(torch.func.grad(loss), in_dims=(0, None))(stacked, x)
    assert grads["wte.weight"].shape == (4, 16, 16) and torch.isfinite(grads["wte.weight"]).all()


def test_demo_model_loads_through_auto_classes(tmp_path: Path) -> None:
    tiny_attn_only().save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["model_type"] == "llc-attn-only"
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m", local_files_only=True, use_safetensors=True)
    assert isinstance(loaded, AttnOnlyForCausalLM)


def _upload_then_break(s3_bucket: str, tmp_path: Path, name: str) -> tuple[str, str]:
    uri = f"s3://{s3_bucket}/broken/{name}/step-1"
    upload_model(tiny_attn_only(), uri, tmp_path)
    return uri, f"s3://{s3_bucket}/broken/{name}"


def test_corrupt_safetensors_is_refused_and_cache_stays_whole(s3_bucket: str, tmp_path: Path) -> None:
    uri, _ = _upload_then_break(s3_bucket, tmp_path, "corrupt")
    store = open_store(uri)
    data = store.get_bytes("model.safetensors")
    store.put_bytes("model.safetensors", b"\xff" * 16 + data[16:])
    cache = LocalCache(tmp_path / "cache")
    with pytest.raises(CheckpointError, match=rf"model.safetensors of checkpoint {uri} is not a valid safetensors"):
        load_checkpoint(uri, cache=cache)
    # The cache holds the object exactly as stored (complete, verified), never a partial download.
    ((entry, size, _),) = cache.entries()
    assert size == len(data) + len(store.get_bytes("config.json"))
    assert list((tmp_path / "cache" / "tmp").iterdir()) == []


def test_truncated_safetensors_is_refused(s3_bucket: str, tmp_path: Path) -> None:
    uri, _ = _upload_then_break(s3_bucket, tmp_path, "truncated")
    store = open_store(uri)
    store.put_bytes("model.safetensors", store.get_bytes("model.safetensors")[:200])
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_checkpoint(uri, cache=LocalCache(tmp_path / "cache"))


def test_unknown_architecture_is_refused(s3_bucket: str, tmp_path: Path) -> None:
    uri, _ = _upload_then_break(s3_bucket, tmp_path, "unknown")
    store = open_store(uri)
    config = json.loads(store.get_bytes("config.json"))
    config["model_type"] = "my-secret-arch"
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_secret.SecretModel"}
    store.put_bytes("config.json", json.dumps(config).encode())
    store.put_bytes("modeling_secret.py", b"raise SystemExit('remote code must never run')")
    with pytest.raises(CheckpointError, match=rf"{uri} has an unknown architecture \(model_type='my-secret-arch'\)"):
        load_checkpoint(uri, cache=LocalCache(tmp_path / "cache"))


def test_pickle_only_and_missing_weights_are_refused(s3_bucket: str, tmp_path: Path) -> None:
    uri, _ = _upload_then_break(s3_bucket, tmp_path, "pickle")
    store = open_store(uri)
    store.delete("model.safetensors")
    store.put_bytes("pytorch_model.bin", b"\x80\x04not really a pickle")
    with pytest.raises(CheckpointError, match="holds only pickled weights, which are never loaded"):
        load_checkpoint(uri, cache=LocalCache(tmp_path / "cache"))


def test_weights_not_matching_config_are_refused(s3_bucket: str, tmp_path: Path) -> None:
    uri, _ = _upload_then_break(s3_bucket, tmp_path, "mismatch")
    store = open_store(uri)
    config = json.loads(store.get_bytes("config.json"))
    config["n_layers"] = 3        # the weights only have two layers
    store.put_bytes("config.json", json.dumps(config).encode())
    with pytest.raises(CheckpointError, match="does not match its config.json"):
        load_checkpoint(uri, cache=LocalCache(tmp_path / "cache"))


def test_activation_checkpointing_support_is_read_from_config_json() -> None:
    # What transformers' own classes declare, from config.json alone (a sweep is checked before any
    # weights are read); None where neither transformers nor workers.models knows the model_type.
    assert architecture_checkpoints(GPT2Config(n_layer=1).to_dict()) is True
    assert architecture_checkpoints({"model_type": "llama"}) is True
    assert architecture_checkpoints({"model_type": "llc-attn-only"}) is False
    assert architecture_checkpoints({"model_type": "no-such-architecture"}) is None
    assert architecture_checkpoints({}) is None
