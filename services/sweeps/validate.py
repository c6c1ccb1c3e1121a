"""Submit-time checks: refuse a sweep whose jobs could never run, before anything is written.

Without these, an impossible sweep (no dataset, `max_sequences=0`, a batch larger than the
data, a dataset the model cannot embed) is written as jobs that fail one by one on workers.
Each refusal is one sentence naming the setting and the fix. Reads are small: the dataset's
header and the config.json of the first and last chosen checkpoint.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Protocol

from services.core.errors import UserError
from services.sweeps.expand import sampler_points
from services.sweeps.schema import LLCConfig


class SweepRefused(UserError):
    """The sweep's jobs could not run as specified; nothing was written."""


class CheckpointLike(Protocol):
    @property
    def step(self) -> int: ...
    @property
    def uri(self) -> str: ...


def validate_sweep(cfg: LLCConfig, *, dataset_uri: str, checkpoints: Sequence[CheckpointLike]) -> str:
    """Raise SweepRefused (one sentence) for the first reason the sweep cannot run; else return the
    dataset's fingerprint (jobs carry it so a worker with a cached copy need not list the store)."""
    from workers.datasets import DatasetError, dataset_fingerprint, read_header

    max_sequences = cfg.sweep.dataset.max_sequences
    if max_sequences is not None and max_sequences <= 0:
        raise SweepRefused(f"sweep.dataset.max_sequences={max_sequences} leaves no data; set it to a positive "
                           "number of sequences or null for the whole dataset.")
    _check_sampler(cfg)
    try:
        fingerprint = dataset_fingerprint(dataset_uri)
        header = read_header(dataset_uri)
    except DatasetError as exc:
        raise SweepRefused(f"{str(exc).rstrip('.')} (sweep.dataset.uri={cfg.sweep.dataset.uri}); "
                           "nothing was submitted.") from exc
    n = header.num_sequences if max_sequences is None else min(max_sequences, header.num_sequences)
    too_big = sorted({int(b) for b in cfg.sampler.batch_size if int(b) > n})
    if too_big:
        raise SweepRefused(f"sampler.batch_size={too_big[0]} is larger than the {n} sequences the sweep uses from "
                           f"{dataset_uri}; lower sampler.batch_size or raise sweep.dataset.max_sequences.")
    for ref in _ends(checkpoints):
        config = read_model_config(ref.uri)
        if cfg.sweep.activation_checkpointing:
            _check_checkpointing(config, ref.uri)
        vocab, positions = _model_shape(config)
        if vocab is not None and header.vocab_size > vocab:
            raise SweepRefused(f"The dataset {dataset_uri} has vocab_size {header.vocab_size}, larger than the "
                               f"{vocab} of checkpoint {ref.uri}; use a dataset tokenized for that model.")
        if positions is not None and header.seq_len > positions:
            raise SweepRefused(f"The dataset {dataset_uri} has seq_len {header.seq_len}, longer than the "
                               f"{positions} positions of checkpoint {ref.uri}; use shorter sequences.")
    return fingerprint


def _check_sampler(cfg: LLCConfig) -> None:
    """Every grid point must make a valid SGLDConfig (the worker would refuse it otherwise)."""
    from workers.llc import SGLDConfig

    try:
        SGLDConfig(compile=cfg.sweep.compile, activation_checkpointing=cfg.sweep.activation_checkpointing)
    except ValueError as exc:
        raise SweepRefused(f"{str(exc).rstrip('.')}; fix the sweep.* override.") from exc
    for point in sampler_points(cfg.sampler):
        try:
            SGLDConfig(epsilon=point["epsilon"], gamma=point["gamma"], nbeta=point["nbeta"],
                       num_chains=point["num_chains"], num_draws=point["num_draws"], num_burnin=point["num_burnin"],
                       steps_between_draws=point["steps_between_draws"], batch_size=point["batch_size"],
                       baseline=point["baseline"])
        except ValueError as exc:
            raise SweepRefused(f"{str(exc).rstrip('.')}; fix the sampler.* override.") from exc


def _ends(checkpoints: Sequence[CheckpointLike]) -> list[CheckpointLike]:
    """First and last checkpoint by step: a run's architecture does not change between them."""
    ordered = sorted(checkpoints, key=lambda c: c.step)
    return ordered[:1] + ordered[-1:] if len(ordered) > 1 else ordered


def read_model_config(uri: str) -> dict:
    """A checkpoint's config.json, or SweepRefused naming it."""
    from workers.objectstore import ObjectStoreError, open_store

    try:
        return json.loads(open_store(uri).get_bytes("config.json"))
    except (ObjectStoreError, ValueError) as exc:
        raise SweepRefused(f"The config.json of checkpoint {uri} cannot be read ({exc}); re-save the checkpoint.") \
            from exc


def _check_checkpointing(config: dict, uri: str) -> None:
    """sweep.activation_checkpointing on an architecture without it would fail every job."""
    from workers.loading import architecture_checkpoints

    if architecture_checkpoints(config) is False:
        raise SweepRefused(f"sweep.activation_checkpointing=true, but checkpoint {uri} is a "
                           f"{config.get('model_type')!r} model, whose transformers class has no activation "
                           "checkpointing; set sweep.activation_checkpointing=false.")


def _model_shape(config: dict) -> tuple[int | None, int | None]:
    """(vocab_size, positions) from a checkpoint's config.json; None where it does not say."""
    vocab = config.get("vocab_size")
    positions = config.get("n_positions") or config.get("max_position_embeddings")
    return (int(vocab) if vocab else None, int(positions) if positions else None)
