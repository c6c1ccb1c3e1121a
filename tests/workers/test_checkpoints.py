"""Checkpoint discovery under a run prefix on a real moto S3 server and on file://."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.workers.storage_helpers import tiny_attn_only, upload_model
from workers.checkpoints import CheckpointError, discover_checkpoints, inspect_checkpoint, parse_step
from workers.objectstore import open_store


def test_parse_step() -> None:
    assert parse_step("step-120") == 120
    assert parse_step("step7") == 7
    assert parse_step("step-") is None
    assert parse_step("dataset") is None
    assert parse_step("step-3a") is None


def test_discovery_sorted_with_both_namings_and_skips_half_written(s3_bucket: str, tmp_path: Path) -> None:
    run = f"s3://{s3_bucket}/runs/r1"
    for step, name in [(100, "step-100"), (5, "step5"), (20, "step-20")]:
        upload_model(tiny_attn_only(seed=step), f"{run}/{name}", tmp_path)
    store = open_store(run)
    store.put_bytes("step-40/model.safetensors", b"partial")     # no config.json yet
    store.put_bytes("step-60/config.json", b"{}")                # no weights yet
    store.put_bytes("step-80/config.json", b"{}")
    store.put_bytes("step-80/pytorch_model.bin", b"pickle")      # pickles only
    store.put_bytes("dataset/header.json", b"{}")                # not a checkpoint folder
    store.put_bytes("step-20/optimizer.pt", b"ignored")          # never fetched nor fingerprinted

    skipped: list[str] = []
    refs = discover_checkpoints(run, on_skip=skipped.append)
    assert [r.step for r in refs] == [5, 20, 100]
    assert [r.uri for r in refs] == [f"{run}/step5", f"{run}/step-20", f"{run}/step-100"]
    assert all(r.run == run for r in refs)
    assert {f.key for f in refs[1].files} == {"config.json", "model.safetensors"}
    assert len({r.fingerprint for r in refs}) == 3
    assert len(skipped) == 3
    assert any("step-40 has no config.json" in s for s in skipped)
    assert any("step-60 has no model.safetensors" in s for s in skipped)
    assert any("step-80 holds only pickled weights" in s for s in skipped)

    # Rewriting a checkpoint changes its fingerprint; the others keep theirs.
    upload_model(tiny_attn_only(seed=999), f"{run}/step-20", tmp_path / "again")
    again = {r.step: r.fingerprint for r in discover_checkpoints(run)}
    assert again[20] != refs[1].fingerprint
    assert again[5] == refs[0].fingerprint and again[100] == refs[2].fingerprint


def test_sharded_checkpoint_needs_every_shard(tmp_path: Path) -> None:
    run = (tmp_path / "objects" / "run").as_uri()
    store = open_store(run)
    index = b'{"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}'
    store.put_bytes("step-1/config.json", b"{}")
    store.put_bytes("step-1/model.safetensors.index.json", index)
    store.put_bytes("step-1/model-00001-of-00002.safetensors", b"x")
    skipped: list[str] = []
    with pytest.raises(CheckpointError, match="No checkpoints .* under file://"):
        discover_checkpoints(run, on_skip=skipped.append)
    assert "lacks shard(s) model-00002-of-00002.safetensors" in skipped[0]
    store.put_bytes("step-1/model-00002-of-00002.safetensors", b"y")
    (ref,) = discover_checkpoints(run)
    assert len(ref.files) == 4


def test_no_checkpoints_and_missing_bucket_are_clear(s3_bucket: str) -> None:
    with pytest.raises(CheckpointError, match=rf"No checkpoints .* under s3://{s3_bucket}/empty \(nothing is stored"):
        discover_checkpoints(f"s3://{s3_bucket}/empty")
    with pytest.raises(CheckpointError, match="bucket 'llc-does-not-exist' .* does not exist"):
        discover_checkpoints("s3://llc-does-not-exist/run")


def test_inspect_single_checkpoint(s3_bucket: str, tmp_path: Path) -> None:
    uri = f"s3://{s3_bucket}/r/step-7"
    upload_model(tiny_attn_only(), uri, tmp_path)
    ref = inspect_checkpoint(uri)
    assert (ref.step, ref.uri, ref.run) == (7, uri, f"s3://{s3_bucket}/r")
    with pytest.raises(CheckpointError, match=rf"no checkpoint at s3://{s3_bucket}/r/step-8"):
        inspect_checkpoint(f"s3://{s3_bucket}/r/step-8")
