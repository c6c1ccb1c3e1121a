"""What the store hands out and takes in: plain frozen dataclasses, never live ORM objects.

Like MLflow's SQLAlchemy store returning entities, every read is a snapshot that stays valid
after its session closes, and every write takes one of these inputs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol


class CheckpointLike(Protocol):
    """A discovered checkpoint (workers.checkpoints.CheckpointRef) or a stored one."""

    @property
    def step(self) -> int: ...
    @property
    def uri(self) -> str: ...
    @property
    def fingerprint(self) -> str: ...


@dataclass(frozen=True)
class CheckpointInfo:
    id: int
    training_run_id: int
    step: int
    uri: str
    fingerprint: str


@dataclass(frozen=True)
class SweepInfo:
    id: int
    name: str
    config: dict[str, Any]
    submitted_by: str
    submitter_kind: str
    training_run_uri: str | None
    status: str
    mlflow_run_id: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True)
class JobInfo:
    id: int
    key: str
    checkpoint_uri: str
    step: int
    hyperparameters: dict[str, Any]
    seed: int
    spec: dict[str, Any]
    status: str
    attempts: int
    error: str | None
    lease_owner: str | None
    lease_expires_at: datetime | None
    worker_host: str | None
    mlflow_run_id: str | None
    started_at: datetime | None
    finished_at: datetime | None


@dataclass(frozen=True)
class PlannedJob:
    """One job a sweep needs (services.sweeps.expand makes them). `spec` is the JSON of the worker's JobSpec."""

    checkpoint: CheckpointLike
    key: str
    hyperparameters: dict[str, Any]
    seed: int
    spec: dict[str, Any]


@dataclass(frozen=True)
class AddJobsOutcome:
    """What add_jobs did, per distinct job key.

    new: jobs that will run for this sweep (created now, plus `requeued` failed/cancelled ones
    put back to pending); already_done: keys with a result (succeeded/diverged), reused;
    already_queued: keys pending or running for another sweep (or listed twice).
    """

    new: int
    already_done: int
    already_queued: int
    requeued: int = 0
    job_ids: tuple[int, ...] = field(default=(), repr=False)

    @property
    def total(self) -> int:
        return self.new + self.already_done + self.already_queued


@dataclass(frozen=True)
class NewResult:
    """One finished job's result: `result` is workers.job.JobResult.to_dict() (what the Ray task returns)."""

    job_id: int
    result: dict[str, Any]
    diverged: bool
    mlflow_run_id: str | None = None


@dataclass(frozen=True)
class RecordedResults:
    """What record_results did: the job ids stored (in the order given), the reason for each
    refused one, and the sweeps whose last active job this write finished."""

    stored: tuple[int, ...] = ()
    refused: dict[int, str] = field(default_factory=dict)
    finished_sweeps: tuple[int, ...] = ()


@dataclass(frozen=True)
class RecordedFailure:
    """What record_failure did: the job's new status (pending = will be retried) and finished sweeps."""

    status: str
    finished_sweeps: tuple[int, ...] = ()


@dataclass(frozen=True)
class ResultRow:
    """One of a sweep's jobs with its result (result fields None until it has one)."""

    job_id: int
    key: str
    step: int
    checkpoint_uri: str
    hyperparameters: dict[str, Any]
    seed: int
    status: str
    error: str | None
    mlflow_run_id: str | None
    llc_mean: float | None = None
    llc_std: float | None = None
    llc_per_chain: list[Any] | None = None
    init_loss: float | None = None
    loss_wstar: float | None = None
    baseline_loss: float | None = None
    nbeta: float | None = None
    n: int | None = None
    num_chains: int | None = None
    num_draws: int | None = None
    diverged: bool = False
    diagnostics: dict[str, Any] | None = None
    wall_time_s: float | None = None
    device: str | None = None
    worker_host: str | None = None

    @property
    def loss_at_wstar(self) -> float | None:
        """L_n(w*): the full-data loss at the checkpoint when the estimator reported it, else
        init_loss (L_m(w*) on a chain's first batch, what older results carry)."""
        return self.loss_wstar if self.loss_wstar is not None else self.init_loss


@dataclass(frozen=True)
class StageRow:
    """A stage to store: `kind` is 'A' (loss falls, λ̂ rises), 'B' (loss flat, λ̂ falls) or 'other'."""

    hyperparameters: dict[str, Any]
    start_step: int
    end_step: int
    kind: str
    llc_change: float | None = None
    loss_change: float | None = None
    details: dict[str, Any] | None = None


@dataclass(frozen=True)
class StageInfo(StageRow):
    """A stored stage."""

    id: int = 0
    sweep_id: int = 0
    setting_key: str = ""
