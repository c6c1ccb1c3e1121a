"""Checkpoint discovery: a training run is a prefix, its checkpoints `step-<N>/` or `step<N>/`.

Each checkpoint is a Hugging Face model directory. The fingerprint comes from object
ETags and sizes, so a rewritten checkpoint gets a new job key and a new cache entry
without reading any weights.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from workers.objectstore import ObjectInfo, ObjectStore, ObjectStoreError, join_uri, open_store

log = logging.getLogger(__name__)

_STEP_DIR = re.compile(r"^step-?(\d+)$")
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names its URI and the fix."""


@dataclass(frozen=True)
class CheckpointRef:
    run: str                          # the run prefix URI
    step: int
    uri: str                          # the checkpoint directory URI
    fingerprint: str                  # sha256 over (name, size, etag) of the model files
    files: tuple[ObjectInfo, ...]     # keys relative to `uri`


def parse_step(name: str) -> int | None:
    """`step-120` / `step120` -> 120; anything else -> None."""
    match = _STEP_DIR.match(name)
    return int(match.group(1)) if match else None


def is_model_file(name: str) -> bool:
    """The files a load needs (config, safetensors weights, shard index); never optimizer state or pickles."""
    return name in ("config.json", "generation_config.json", INDEX_FILE) or name.endswith(".safetensors")


def fingerprint_of(files: Sequence[ObjectInfo]) -> str:
    canon = json.dumps(sorted((f.key, f.size, f.etag) for f in files), separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()


def _problem(uri: str, names: set[str], store: ObjectStore) -> str | None:
    """Why the directory is not a loadable checkpoint, or None if it is complete."""
    if "config.json" not in names:
        return f"checkpoint {uri} has no config.json (half-written, or not a Hugging Face model directory)"
    if WEIGHTS_FILE in names:
        return None
    if INDEX_FILE in names:
        try:
            index = json.loads(store.get_bytes(INDEX_FILE))
            shards = set(index["weight_map"].values())
        except (ValueError, KeyError, TypeError):
            return f"checkpoint {uri} has an unreadable {INDEX_FILE}; rewrite it with save_pretrained"
        missing = sorted(shards - names)
        if missing:
            return f"checkpoint {uri} lacks shard(s) {', '.join(missing[:3])} listed in {INDEX_FILE} (half-written?)"
        return None
    if any(n.endswith(_PICKLE_SUFFIXES) for n in names):
        return (f"checkpoint {uri} holds only pickled weights, which are never loaded; re-save it with "
                "save_pretrained(..., safe_serialization=True) to get model.safetensors")
    return f"checkpoint {uri} has no {WEIGHTS_FILE} (half-written?)"


def _ref(run_uri: str, step: int, uri: str, objects: Sequence[ObjectInfo], store: ObjectStore) -> CheckpointRef:
    names = {o.key for o in objects if "/" not in o.key}
    problem = _problem(uri, names, store)
    if problem:
        raise CheckpointError(problem[0].upper() + problem[1:] + ".")
    files = tuple(o for o in objects if "/" not in o.key and is_model_file(o.key))
    return CheckpointRef(run=run_uri, step=step, uri=uri, fingerprint=fingerprint_of(files), files=files)


def inspect_checkpoint(uri: str, *, step: int | None = None) -> CheckpointRef:
    """One checkpoint directory by URI; raises CheckpointError when it is missing or incomplete."""
    uri = uri.rstrip("/")
    run_uri, _, name = uri.rpartition("/")
    step = parse_step(name) if step is None else step
    try:
        store = open_store(uri)
        objects = store.list()
    except ObjectStoreError as exc:
        raise CheckpointError(str(exc)) from exc
    if not objects:
        raise CheckpointError(f"There is no checkpoint at {uri}; check the URI (nothing is stored under it).")
    return _ref(run_uri, -1 if step is None else step, uri, objects, store)


def discover_checkpoints(run_uri: str, *, on_skip: Callable[[str], None] | None = None) -> list[CheckpointRef]:
    """All complete checkpoints under a run prefix, sorted by step; incomplete ones are skipped and reported."""
    run_uri = run_uri.rstrip("/")
    try:
        store = open_store(run_uri)
        objects = store.list()
    except ObjectStoreError as exc:
        raise CheckpointError(str(exc)) from exc
    by_step: dict[tuple[int, str], list[ObjectInfo]] = {}
    for obj in objects:
        head, sep, rest = obj.key.partition("/")
        step = parse_step(head)
        if sep and step is not None:
            by_step.setdefault((step, head), []).append(ObjectInfo(key=rest, size=obj.size, etag=obj.etag))
    refs: list[CheckpointRef] = []
    for (step, name), objs in sorted(by_step.items()):
        uri = join_uri(run_uri, name)
        try:
            refs.append(_ref(run_uri, step, uri, objs, store.child(name)))
        except CheckpointError as exc:
            log.warning("skipping: %s", exc)
            if on_skip is not None:
                on_skip(str(exc))
    if not refs:
        what = "nothing is stored there" if not objects else f"{len(by_step)} step folder(s), none complete"
        raise CheckpointError(f"No checkpoints (step-<N>/ or step<N>/ folders with config.json and "
                              f"{WEIGHTS_FILE}) were found under {run_uri} ({what}); check the run prefix.")
    seen: dict[int, str] = {}
    for ref in refs:
        if ref.step in seen:
            raise CheckpointError(f"Step {ref.step} appears twice under {run_uri} ({seen[ref.step]} and "
                                  f"{ref.uri}); keep one of them.")
        seen[ref.step] = ref.uri
    return refs
