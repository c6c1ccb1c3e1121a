"""`train-demo`: a tiny real training run whose induction heads form, written to S3."""
from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from workers.cache import LocalCache
from workers.checkpoints import discover_checkpoints
from workers.datasets import load_token_dataset
from workers.demo_training import DemoRun, DemoRunError, DemoSettings, checkpoint_steps, formation_step, train_demo
from workers.loading import load_checkpoint
from workers.models import AttnOnlyForCausalLM
from workers.objectstore import open_store

# Small enough for CI, large enough that induction heads reliably form (seeded).
TINY = DemoSettings(steps=800, num_checkpoints=6, lr=2e-3, dataset_sequences=64, eval_sequences=128)


@pytest.fixture(scope="module")
def tiny_run(s3_endpoint: str) -> Iterator[DemoRun]:
    import boto3

    bucket = f"llc-demo-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    yield train_demo(f"s3://{bucket}/demo-run", TINY, show_progress=False)


def test_checkpoint_steps_are_log_spaced() -> None:
    steps = checkpoint_steps(3000, 40)
    assert len(steps) == 40 and steps[0] == 0 and steps[-1] == 3000
    assert all(b > a for a, b in zip(steps, steps[1:]))
    assert steps[:5] == [0, 1, 2, 3, 4]
    assert steps[-1] / steps[-2] == pytest.approx(steps[-2] / steps[-3], rel=0.05)
    assert checkpoint_steps(5, 40) == [0, 1, 2, 3, 4, 5]


def test_formation_step() -> None:
    rows = [{"step": s, "in_context_loss": v} for s, v in [(0, 4.0), (10, 4.0), (20, 3.9), (30, 1.0), (40, 0.5)]]
    assert formation_step(rows) == 30
    flat = [{"step": s, "in_context_loss": 4.0} for s in range(5)]
    assert formation_step(flat) is None


def test_induction_heads_form(tiny_run: DemoRun) -> None:
    meta = tiny_run.checkpoints
    assert [m["step"] for m in meta] == checkpoint_steps(TINY.steps, TINY.num_checkpoints)
    first, last = meta[0], meta[-1]
    assert first["in_context_loss"] > 4.0 and first["induction_score"] < 0.1   # ~log(64), ~uniform attention
    assert last["in_context_loss"] < 1.5                                        # copying works
    assert last["induction_score"] > 0.5
    assert last["induction_head"].startswith("1.")                               # it sits in layer 1
    assert last["other_loss"] > 4.0                                              # random tokens stay random
    assert tiny_run.formed_at_step is not None and 0 < tiny_run.formed_at_step <= TINY.steps
    # Per-head scores: the induction head named above scores as it does; a layer-0 head attends to t − 1.
    heads = last["heads"]
    assert len(heads) == TINY.n_layers * TINY.n_heads
    assert heads[last["induction_head"]]["induction"] > 0.5
    assert max(h["prev_token"] for name, h in heads.items() if name.startswith("0.")) > 0.5
    assert max(h["prev_token"] for h in first["heads"].values()) < 0.3


def test_run_layout_loads_through_the_job_path(tiny_run: DemoRun, tmp_path: Path) -> None:
    refs = discover_checkpoints(tiny_run.run_uri)
    assert [r.step for r in refs] == checkpoint_steps(TINY.steps, TINY.num_checkpoints)
    cache = LocalCache(tmp_path / "cache")
    model, _ = load_checkpoint(refs[-1], cache=cache)
    assert isinstance(model, AttnOnlyForCausalLM)
    ds = load_token_dataset(f"{tiny_run.run_uri}/dataset", cache=cache)
    assert ds.tokens.shape == (TINY.dataset_sequences, TINY.seq_len) and ds.vocab_size == TINY.vocab_size
    with torch.no_grad():
        trained = model(ds.tokens, labels=ds.tokens).loss
        initial = load_checkpoint(refs[0], cache=cache)[0](ds.tokens, labels=ds.tokens).loss
    assert float(trained) < float(initial) - 0.3
    assert "metadata.json" in {o.key for o in open_store(refs[-1].uri).list()}


def test_rerun_reuses_and_a_foreign_prefix_is_refused(tiny_run: DemoRun) -> None:
    started = time.perf_counter()
    again = train_demo(tiny_run.run_uri, TINY, show_progress=False)
    assert again.reused and again.checkpoints == tiny_run.checkpoints
    assert time.perf_counter() - started < 30   # generous: no training happened
    other = DemoSettings(**{**TINY.__dict__, "seed": 1})
    with pytest.raises(DemoRunError, match=f"{tiny_run.run_uri} already holds other objects.*--force"):
        train_demo(tiny_run.run_uri, other, show_progress=False)
    assert len(discover_checkpoints(tiny_run.run_uri)) == TINY.num_checkpoints   # nothing destroyed


def test_a_run_written_before_a_settings_field_existed_is_still_reused(tmp_path: Path) -> None:
    import json

    settings = DemoSettings(steps=4, num_checkpoints=3, dataset_sequences=8, eval_sequences=16)
    first = train_demo(tmp_path.as_uri(), settings, show_progress=False)
    config = tmp_path / "train_config.json"
    stored = json.loads(config.read_text())
    del stored["skip_bigram_period"]          # what a run trained before the field was added holds
    config.write_text(json.dumps(stored))
    again = train_demo(tmp_path.as_uri(), settings, show_progress=False)
    assert again.reused and again.checkpoints == first.checkpoints
    # ...but not as a run with the new field set away from its default.
    with pytest.raises(DemoRunError, match="already holds other objects"):
        train_demo(tmp_path.as_uri(), DemoSettings(**{**settings.__dict__, "skip_bigram_period": 4}),
                   show_progress=False)
