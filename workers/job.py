"""The job body: a JobSpec (URIs + small specs) in, a JobResult out.

The scheduler sends JobSpecs to Ray tasks, never tensors; everything heavy (weights,
tokens) is pulled here from the object store through the node's local cache. Input
problems raise JobInputError (one sentence naming the URI; retrying will not help);
a diverged estimate is a normal result with diverged=True.
"""
from __future__ import annotations

import errno
import math
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from workers.cache import LocalCache
from workers.checkpoints import CheckpointError, CheckpointRef, inspect_checkpoint
from workers.datasets import DatasetError, TokenDataset, check_fits_model, load_token_dataset
from workers.objectstore import ObjectStoreUnavailable


class JobInputError(ValueError):
    """A job whose inputs cannot be used (missing/corrupt checkpoint, bad dataset or spec)."""


class JobInfraError(RuntimeError):
    """The node or a service failed the job (S3 away, cache disk full or read-only): nothing is
    wrong with the job, so the scheduler retries it with backoff instead of failing it."""


#: OS errors that are the node's fault, not the job's
_INFRA_ERRNOS = frozenset({errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EIO})


def _infra_cause(exc: BaseException) -> BaseException | None:
    """The infrastructure fault behind `exc` (itself or a cause in its chain), if any."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, ObjectStoreUnavailable) or (isinstance(cur, OSError) and cur.errno in _INFRA_ERRNOS):
            return cur
        cur = cur.__cause__ or cur.__context__
    return None


@dataclass(frozen=True)
class SamplerSpec:
    """One point of a sweep's hyperparameter grid."""

    epsilon: float | str                  # a step size, or "auto" (calibrated by the estimator)
    gamma: float | str                    # a localization strength, or "auto" (calibrated by the estimator)
    nbeta: float | None
    num_chains: int
    num_draws: int
    num_burnin: int
    batch_size: int
    steps_between_draws: int = 1
    baseline: str = "paired"
    method: str = "sgld"                  # sgld | rmsprop_sgld


@dataclass(frozen=True)
class DatasetSpec:
    uri: str                              # object-store prefix of a token dataset
    max_sequences: int | None = None      # use the first N sequences (n = N)


@dataclass(frozen=True)
class JobSpec:
    checkpoint_uri: str
    fingerprint: str
    step: int
    dataset: DatasetSpec
    sampler: SamplerSpec
    seed: int
    device: str = "auto"                  # "auto" -> cuda if available else cpu
    num_threads: int | None = None        # pin torch threads to the worker's CPU share
    cache_dir: str | None = None          # default from LLC_CACHE_DIR / embedded default
    sample_params: tuple[str, ...] | None = None   # weight-restricted LLC (fnmatch patterns)
    compile: bool | None = None           # torch.compile the SGLD step; None: auto (how it runs, not what: not in the job key)
    epsilon_hint: float | None = None     # epsilon=auto: a step picked on another checkpoint of the sweep, re-checked here
    gamma_hint: float | None = None       # gamma=auto: the same for the localization strength
    dtype: str = "float32"                # the model computes in: float32 | bfloat16 | float16 (SGLD state stays fp32)
    memory_bytes: int | None = None       # memory the job may use on its device (the scheduler's figure for the worker)
    activation_checkpointing: bool = False  # recompute layer activations in the backward (how it runs: not in the key)
    dataset_fingerprint: str | None = None  # the dataset as submitted: a cached copy is used without listing (not in the key)


def _json_float(x: Any) -> float | None:
    return float(x) if x is not None and math.isfinite(float(x)) else None


def _nan(x: Any) -> float:
    return math.nan if x is None else float(x)


@dataclass
class JobResult:
    llc_mean: float
    llc_std: float
    llc_per_chain: list[float]
    init_loss: float
    baseline_loss: float
    nbeta: float
    n: int
    num_chains: int
    num_draws: int
    diverged: bool
    diagnostics: dict[str, float | bool | None]
    loss_trace: list[list[float]]          # (chains, draws)
    wall_time_s: float
    device: str
    host: str
    estimator_version: str
    extra: dict[str, Any] = field(default_factory=dict)   # path, fallback reason, checkpoint step, calibration
    loss_wstar: float | None = None        # L_n(w*) (or the best full-data estimate at w*; extra["notes"] says which)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe (strict JSON: NaN/inf become null, as Postgres JSONB requires)."""
        d = asdict(self)
        for key in ("llc_mean", "llc_std", "init_loss", "baseline_loss", "nbeta", "wall_time_s"):
            d[key] = _json_float(d[key])
        d["loss_wstar"] = None if self.loss_wstar is None else _json_float(self.loss_wstar)
        d["llc_per_chain"] = [_json_float(x) for x in self.llc_per_chain]
        d["loss_trace"] = [[_json_float(x) for x in row] for row in self.loss_trace]
        d["diagnostics"] = {k: (v if isinstance(v, bool) or v is None else _json_float(v))
                            for k, v in self.diagnostics.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "JobResult":
        d = dict(d)
        for key in ("llc_mean", "llc_std", "init_loss", "baseline_loss", "nbeta", "wall_time_s"):
            d[key] = _nan(d.get(key))
        d["llc_per_chain"] = [_nan(x) for x in d.get("llc_per_chain", [])]
        d["loss_trace"] = [[_nan(x) for x in row] for row in d.get("loss_trace", [])]
        d["n"], d["num_chains"], d["num_draws"] = int(d["n"]), int(d["num_chains"]), int(d["num_draws"])
        d["diverged"] = bool(d["diverged"])
        d.setdefault("extra", {})
        d["loss_wstar"] = None if d.get("loss_wstar") is None else _nan(d["loss_wstar"])
        return cls(**d)


def causal_lm_loss(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over every position of every sequence in the batch.

    Computed in fp32 whatever the model's dtype (a bf16 log-softmax over a 50k vocabulary loses
    the small loss differences lambda-hat is made of). The targets are shifted (the last position's
    is ignored), not the logits sliced: slicing copies the (B, T, vocab) logits forward and again
    backward, ~8 % of a 70M model's step on CPU (benchmarks/README.md)."""
    logits = model(input_ids=batch, use_cache=False).logits.float()
    targets = F.pad(batch[:, 1:], (0, 1), value=-100)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise JobInputError(f"The job asks for device {device!r} but this worker has no CUDA GPU; use "
                            "device=auto or schedule it on a GPU worker.")
    return device


# One loaded model per process: jobs of a sweep often share a checkpoint (grid points, seeds).
_MODEL_MEMO: dict[tuple[str, str, str, str], tuple[nn.Module, CheckpointRef]] = {}


def _load_model(spec: JobSpec, cache: LocalCache, device: str) -> tuple[nn.Module, CheckpointRef]:
    from workers.loading import load_checkpoint  # transformers: only where a job runs, not where specs are built

    key = (spec.checkpoint_uri, spec.fingerprint, device, spec.dtype)
    if key in _MODEL_MEMO:
        return _MODEL_MEMO[key]
    hit = cache.cached(spec.checkpoint_uri, spec.fingerprint)
    if hit is not None:   # verified when it was filled: the job runs without listing S3 (or while it is away)
        ref = CheckpointRef(run=spec.checkpoint_uri.rstrip("/").rpartition("/")[0], step=spec.step,
                            uri=spec.checkpoint_uri, fingerprint=spec.fingerprint, files=tuple(hit[1]))
    else:
        ref = inspect_checkpoint(spec.checkpoint_uri, step=spec.step)
    if ref.fingerprint != spec.fingerprint:
        raise JobInputError(f"Checkpoint {spec.checkpoint_uri} changed since the sweep was submitted (fingerprint "
                            f"{ref.fingerprint[:12]} != {spec.fingerprint[:12]}); resubmit the sweep to estimate "
                            "the new contents.")
    model, ref = load_checkpoint(ref, cache=cache, device=device, dtype=_DTYPES[spec.dtype])
    _MODEL_MEMO.clear()
    _MODEL_MEMO[key] = (model, ref)
    return model, ref


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _sgld_config(spec: JobSpec) -> Any:
    from workers.llc import SGLDConfig

    s = spec.sampler
    try:
        return SGLDConfig(epsilon=s.epsilon, gamma=s.gamma, nbeta=s.nbeta, num_chains=s.num_chains,
                          num_draws=s.num_draws, num_burnin=s.num_burnin, steps_between_draws=s.steps_between_draws,
                          batch_size=s.batch_size, seed=spec.seed, baseline=s.baseline, method=s.method,
                          sample_params=spec.sample_params, compile=spec.compile, epsilon_hint=spec.epsilon_hint,
                          gamma_hint=spec.gamma_hint,
                          memory_bytes=spec.memory_bytes, activation_checkpointing=spec.activation_checkpointing)
    except ValueError as exc:
        raise JobInputError(str(exc)) from exc


def run_job(spec: JobSpec, *, progress: Callable[[int, int], None] | None = None) -> JobResult:
    """Pull the checkpoint and dataset, run the SGLD estimator, return the result."""
    from workers.llc import ESTIMATOR_VERSION, estimate_llc

    started = time.perf_counter()
    if spec.num_threads:
        torch.set_num_threads(int(spec.num_threads))
    device = resolve_device(spec.device)
    if spec.dtype not in _DTYPES:
        raise JobInputError(f"dtype={spec.dtype!r} is not supported; use one of {sorted(_DTYPES)}.")
    config = _sgld_config(spec)
    cache = LocalCache(spec.cache_dir) if spec.cache_dir else LocalCache()
    try:
        model, ref = _load_model(spec, cache, device)
        dataset: TokenDataset = load_token_dataset(spec.dataset.uri, cache=cache, fingerprint=spec.dataset_fingerprint,
                                                   max_sequences=spec.dataset.max_sequences, memo=True)
        cfg = model.config
        positions = getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None)
        check_fits_model(dataset, model_vocab_size=int(cfg.vocab_size), max_positions=positions,
                         model_uri=spec.checkpoint_uri)
    except (CheckpointError, DatasetError, OSError) as exc:
        if (cause := _infra_cause(exc)) is not None:
            raise JobInfraError(f"{' '.join(str(exc).split())} ({type(cause).__name__})") from exc
        if isinstance(exc, OSError):
            raise
        raise JobInputError(str(exc)) from exc
    if config.batch_size > len(dataset):
        raise JobInputError(f"batch_size={config.batch_size} is larger than the {len(dataset)} sequences of "
                            f"{spec.dataset.uri}; lower sampler.batch_size or use more data.")
    from workers.llc.memory import MemoryPlanError

    try:
        res = estimate_llc(model, causal_lm_loss, dataset, config=config, device=device, progress=progress)
    except MemoryPlanError as exc:
        raise JobInputError(f"{spec.checkpoint_uri}: {exc}") from exc
    diagnostics: dict[str, float | bool | None] = {}
    for k, v in res.diagnostics.items():
        if isinstance(v, bool) or v is None:
            diagnostics[k] = v
        elif isinstance(v, (int, float)) or hasattr(v, "item"):
            diagnostics[k] = float(v)
    diagnostics["vectorized"] = res.path == "vectorized"
    diagnostics["chains_diverged"] = float(sum(bool(x) for x in res.chain_diverged))
    diverged = bool(res.diverged) or not math.isfinite(res.llc_mean)
    extra: dict[str, Any] = {"path": res.path, "fallback_reason": res.fallback_reason, "notes": dict(res.notes),
                             "step": spec.step, "fingerprint": ref.fingerprint}
    if res.calibration is not None:
        extra["calibration"] = res.calibration
    if res.gamma_calibration is not None:
        extra["gamma_calibration"] = res.gamma_calibration
    return JobResult(
        llc_mean=float(res.llc_mean), llc_std=float(res.llc_std), llc_per_chain=[float(x) for x in res.llc_per_chain],
        init_loss=float(res.init_loss), baseline_loss=float(res.baseline_loss), nbeta=float(res.nbeta), n=int(res.n),
        num_chains=config.num_chains, num_draws=config.num_draws, diverged=diverged, diagnostics=diagnostics,
        loss_trace=[[float(x) for x in row] for row in res.loss_trace.tolist()],
        wall_time_s=time.perf_counter() - started, device=str(res.device), host=socket.gethostname(),
        estimator_version=ESTIMATOR_VERSION,
        extra=extra, loss_wstar=_json_float(res.loss_wstar),
    )
