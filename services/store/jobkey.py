"""Job keys: the identity of one LLC estimate, so a finished key is never computed twice.

The key is the sha256 of a canonical JSON document (sorted keys, no whitespace, integral
floats written as integers so `1` and `1.0` agree); it is stable across processes, Python
runs and machines, and it changes whenever anything that changes the result changes.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

KEY_SCHEMA_VERSION = 1


def _canonical(value: Any, path: str) -> Any:
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"job key input {path} is {value!r}; use a finite number.")
        return int(value) if value.is_integer() and abs(value) < 2**53 else value
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"job key input {path} has a non-string key {k!r}; use string keys.")
            out[k] = _canonical(v, f"{path}.{k}")
        return out
    if isinstance(value, (list, tuple)):
        return [_canonical(v, f"{path}[{i}]") for i, v in enumerate(value)]
    item = getattr(value, "item", None)  # numpy / torch scalars
    if callable(item):
        return _canonical(item(), path)
    raise TypeError(f"job key input {path} has type {type(value).__name__}; use JSON values (str, number, bool, None, list, dict).")


def canonical_json(value: Any) -> str:
    """The canonical JSON text the key hashes (exposed for debugging and tests)."""
    return json.dumps(_canonical(value, "$"), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def job_key(*, checkpoint_uri: str, fingerprint: str, dataset: dict, sampler: dict, seed: int, estimator_version: str) -> str:
    """Hex sha256 identifying one estimate (checkpoint content, data, sampler, seed, estimator)."""
    if not checkpoint_uri or not fingerprint:
        raise ValueError("job key needs a checkpoint uri and a non-empty fingerprint; discover checkpoints first so their content hash is known.")
    doc = {
        "key_version": KEY_SCHEMA_VERSION,
        "checkpoint": {"uri": checkpoint_uri, "fingerprint": fingerprint},
        "dataset": dataset,
        "sampler": sampler,
        "seed": int(seed),
        "estimator_version": str(estimator_version),
    }
    return hashlib.sha256(canonical_json(doc).encode("utf-8")).hexdigest()


class JobKeys:
    """Job keys for many jobs that share a dataset and estimator: the canonical JSON is assembled
    from fragments serialized once (per checkpoint, per sampler point), so a 100,000-job sweep
    costs one sha256 per job. `key(...)` equals `job_key(...)` for the same inputs."""

    def __init__(self, *, dataset: dict, estimator_version: str) -> None:
        self._dataset = canonical_json(dataset)
        self._version = canonical_json(str(estimator_version))
        self._checkpoints: dict[tuple[str, str], str] = {}
        self._samplers: dict[int, tuple[dict, str]] = {}

    def checkpoint(self, checkpoint_uri: str, fingerprint: str) -> str:
        """The fragment of everything up to the sampler, for one checkpoint."""
        if not checkpoint_uri or not fingerprint:
            raise ValueError("job key needs a checkpoint uri and a non-empty fingerprint; discover checkpoints first so their content hash is known.")
        found = self._checkpoints.get((checkpoint_uri, fingerprint))
        if found is None:
            ckpt = canonical_json({"uri": checkpoint_uri, "fingerprint": fingerprint})
            found = (f'{{"checkpoint":{ckpt},"dataset":{self._dataset},"estimator_version":{self._version},'
                     f'"key_version":{KEY_SCHEMA_VERSION},"sampler":')
            self._checkpoints[(checkpoint_uri, fingerprint)] = found
        return found

    def sampler(self, sampler: dict) -> str:
        """The sampler's canonical JSON (cached per dict object: pass the same dict for the same point)."""
        cached = self._samplers.get(id(sampler))
        if cached is None or cached[0] is not sampler:
            cached = (sampler, canonical_json(sampler))
            self._samplers[id(sampler)] = cached
        return cached[1]

    def key(self, *, checkpoint_uri: str, fingerprint: str, sampler: dict, seed: int) -> str:
        text = f'{self.checkpoint(checkpoint_uri, fingerprint)}{self.sampler(sampler)},"seed":{int(seed)}}}'
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


def setting_key(hyperparameters: Mapping[str, Any]) -> str:
    """Hex sha256 of one hyperparameter setting (groups stages and curves per setting)."""
    return hashlib.sha256(canonical_json(dict(hyperparameters)).encode("utf-8")).hexdigest()
