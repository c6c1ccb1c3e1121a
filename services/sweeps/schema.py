"""Structured configs registered in Hydra's ConfigStore.

Typed dataclasses make OmegaConf refuse a wrong key or type while the config is composed,
so a mistake is caught before anything is written to the store.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class StoreConfig:
    kind: str = "sqlite"                 # sqlite | postgres
    url: Optional[str] = None            # None → LLC_DATABASE_URL, else the kind's default


@dataclass
class StorageConfig:
    kind: str = "local"                  # local | s3
    uri: Optional[str] = None            # None → LLC_STORAGE_URI, else the kind's default


@dataclass
class TrackingConfig:
    kind: str = "local"                  # local | server
    uri: Optional[str] = None            # None → MLFLOW_TRACKING_URI, else the kind's default


@dataclass
class ClusterConfig:
    kind: str = "local"                  # local | remote
    address: Optional[str] = None        # None → RAY_ADDRESS, else a local Ray (local) / "auto" (remote)
    num_cpus: Optional[int] = None       # CPUs of a local Ray started by `llc run`
    num_gpus: Optional[int] = None


@dataclass
class SamplerGrid:
    """Lists of values; the sweep runs their cartesian product."""

    # step sizes, or "auto" (alone or in the list): the estimator calibrates it per job, and
    # the scheduler carries a pick along the sweep (docs/estimator.md). Any: floats or "auto".
    epsilon: Any = field(default_factory=lambda: [1e-3])
    # localization strengths, or "auto": pilots down a grid of gamma/nbeta pick it per job (carried
    # along the sweep like epsilon; docs/estimator.md). Any: floats or "auto".
    gamma: Any = field(default_factory=lambda: [100.0])
    nbeta: List[Optional[float]] = field(default_factory=lambda: [None])   # None → n / log n
    num_chains: List[int] = field(default_factory=lambda: [4])
    num_draws: List[int] = field(default_factory=lambda: [200])
    num_burnin: List[int] = field(default_factory=lambda: [0])
    batch_size: List[int] = field(default_factory=lambda: [32])
    steps_between_draws: int = 1
    baseline: str = "paired"
    method: str = "sgld"                 # sgld | rmsprop_sgld (preconditioned)


@dataclass
class AdaptiveDensity:
    """Estimate `initial` log-spaced checkpoints of the selection first, then up to `budget` more,
    `per_round` at a time (null: a third of the budget), where λ̂ bends or a stage boundary's
    interval is widest, until the budget is spent or the curve is resolved. `initial: null`
    (the default) turns it off: every selected checkpoint is estimated."""

    initial: Optional[int] = None
    budget: int = 10
    per_round: Optional[int] = None

    @property
    def enabled(self) -> bool:
        return self.initial is not None


@dataclass
class CheckpointSelection:
    """all (defaults), every k-th (`every`), a step range (`start`/`stop`, inclusive), or `steps`;
    `adaptive` then estimates a thinned set of those first and adds checkpoints where needed."""

    every: int = 1
    start: Optional[int] = None
    stop: Optional[int] = None
    steps: Optional[List[int]] = None
    adaptive: AdaptiveDensity = field(default_factory=AdaptiveDensity)


@dataclass
class DatasetConfig:
    uri: str = "${sweep.run}/dataset"    # relative → under the storage URI; by default next to the run
    max_sequences: Optional[int] = None


@dataclass
class Resources:
    num_gpus: float = 0.0
    num_cpus: float = 1.0
    memory_gb: Optional[float] = None


@dataclass
class SweepConfig:
    name: str = "demo"
    run: str = "demo-run"                # training run prefix; relative → under the storage URI
    checkpoints: CheckpointSelection = field(default_factory=CheckpointSelection)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    seeds: List[int] = field(default_factory=lambda: [0])
    resources: Resources = field(default_factory=Resources)
    device: str = "auto"
    # torch.compile each job's SGLD step: a one-off compile per worker process and model
    # shape (cached on disk by torch), then fused kernels; pays off for jobs of minutes.
    # null: the estimator decides (CPU jobs of >= 1 TFLOP of steps; never on GPU).
    compile: Optional[bool] = None
    # Recompute each decoder layer's activations in the backward instead of keeping them (Hugging
    # Face models that support it): less activation memory for ~one more forward per step; chains
    # then run one at a time, eagerly. How jobs run, not what they estimate: not in the job key.
    activation_checkpointing: bool = False
    sample_params: Optional[List[str]] = None   # weight-restricted LLC (fnmatch patterns)
    # One job (and one λ̂ curve) per component: all, embed, unembed, l{L}.attn, l{L}.mlp, l{L}h{H},
    # l{L}g{G}, a+b unions; `heads` = every head of the checkpoints' architecture (workers/llc/components.py).
    components: Optional[List[str]] = None
    dtype: str = "float32"               # the model computes in float32 | bfloat16 | float16 (SGLD state fp32)


@dataclass
class ScheduleConfig:
    """`llc nightly`: when to fire and which conf/sweep configs to submit each time."""

    cron: str = "0 2 * * *"              # standard 5-field cron, read by croniter
    sweeps: List[str] = field(default_factory=lambda: ["demo"])   # names in conf/sweep
    timezone: str = "UTC"                # IANA zone the cron is read in


@dataclass
class LLCConfig:
    store: StoreConfig = field(default_factory=StoreConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    sampler: SamplerGrid = field(default_factory=SamplerGrid)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)


def register_configs() -> None:
    """Register the schema that config.yaml extends; every group file merges into it, typed."""
    ConfigStore.instance().store(name="llc_schema", node=LLCConfig)
