"""Tiny demo training runs in the (moto) S3 object store, shared by the sweeps and scheduler tests."""
from __future__ import annotations

import uuid

import boto3

from workers.demo_training import DemoSettings, train_demo

TINY = DemoSettings(steps=6, num_checkpoints=3, d_model=16, n_heads=2, n_layers=2, vocab_size=32, seq_len=16,
                    batch_size=8, dataset_sequences=48, eval_sequences=8, warmup_steps=1)


def tiny_run(endpoint: str, *, name: str = "demo-run", settings: DemoSettings = TINY) -> tuple[str, str]:
    """Train a tiny demo run into a fresh bucket; returns (bucket URI, run URI)."""
    bucket = f"llc-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    run_uri = f"s3://{bucket}/{name}"
    train_demo(run_uri, settings, show_progress=False)
    return f"s3://{bucket}", run_uri


def tiny_overrides(storage: str, run: str = "demo-run", *, extra: tuple[str, ...] = ()) -> list[str]:
    """A CI-size sweep over a tiny run: every checkpoint, 2 ε, 2 chains × 4 draws."""
    return ["sweep=small", "storage=s3", f"storage.uri={storage}", f"sweep.run={run}", f"sweep.dataset.uri={run}/dataset",
            "sweep.dataset.max_sequences=32", "sweep.checkpoints.every=1", "sampler.epsilon=[1e-4,3e-4]",
            "sampler.num_chains=[2]", "sampler.num_draws=[4]", "sampler.num_burnin=[0]", "sampler.batch_size=[8]",
            *extra]
