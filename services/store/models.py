"""SQLAlchemy 2 models of the results store; Alembic revisions in migrations/ must match them.

Jobs are unique on their job key and linked to sweeps through `sweep_jobs`, so one job (and
its one result) serves every sweep that asks for the same estimate.
"""
from __future__ import annotations

from datetime import datetime, timezone
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from services.core.status import JobStatus, SubmitterKind, SweepStatus

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on every backend (SQLite stores naive text, Postgres timestamptz)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; pass an aware UTC datetime.")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def _in(values: frozenset[str] | type[StrEnum]) -> str:
    return ", ".join(f"'{v}'" for v in sorted(str(v) for v in values))


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, datetime: UTCDateTime}


class TrainingRun(Base):
    """A training run: the prefix under which its checkpoints live."""

    __tablename__ = "training_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uri: Mapped[str] = mapped_column(Text, unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    checkpoints: Mapped[list[Checkpoint]] = relationship(back_populates="training_run", order_by="Checkpoint.step")


class Checkpoint(Base):
    """One checkpoint's content: a rewritten checkpoint (new fingerprint) is a new row."""

    __tablename__ = "checkpoints"
    __table_args__ = (
        UniqueConstraint("uri", "fingerprint"),
        Index("ix_checkpoints_training_run_id_step", "training_run_id", "step"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    training_run_id: Mapped[int] = mapped_column(ForeignKey("training_runs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(BigInteger)
    uri: Mapped[str] = mapped_column(Text)
    fingerprint: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    training_run: Mapped[TrainingRun] = relationship(back_populates="checkpoints")


class Sweep(Base):
    """A submitted study: fully resolved config, who submitted it, and its lifecycle."""

    __tablename__ = "sweeps"
    __table_args__ = (
        CheckConstraint(f"status IN ({_in(SweepStatus)})", name="status"),
        CheckConstraint(f"submitter_kind IN ({_in(SubmitterKind)})", name="submitter_kind"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), index=True)
    config: Mapped[dict[str, Any]]
    submitted_by: Mapped[str] = mapped_column(String(255))
    submitter_kind: Mapped[str] = mapped_column(String(16), default=SubmitterKind.PERSON)
    training_run_id: Mapped[int | None] = mapped_column(ForeignKey("training_runs.id", ondelete="SET NULL"))
    status: Mapped[str] = mapped_column(String(16), default=SweepStatus.SUBMITTED, index=True)
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    finished_at: Mapped[datetime | None]
    # MLflow outbox: set once the ended sweep's children, aggregate and parent state are logged.
    mlflow_synced_at: Mapped[datetime | None]
    mlflow_sync_owner: Mapped[str | None] = mapped_column(String(255))   # who is syncing it now (a lease)
    mlflow_sync_until: Mapped[datetime | None]

    training_run: Mapped[TrainingRun | None] = relationship()
    jobs: Mapped[list[Job]] = relationship(secondary="sweep_jobs", back_populates="sweeps", order_by="Job.id", viewonly=True)


class Job(Base):
    """One LLC estimate, unique on its job key; status, lease and attempts live here."""

    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(f"status IN ({_in(JobStatus)})", name="status"),
        Index("ix_jobs_status_lease_expires_at", "status", "lease_expires_at"),
        Index("ix_jobs_status_id", "status", "id"),  # claiming oldest pending first, counts by status
        Index("ix_jobs_lease_owner", "lease_owner"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)
    checkpoint_id: Mapped[int] = mapped_column(ForeignKey("checkpoints.id", ondelete="RESTRICT"), index=True)
    hyperparameters: Mapped[dict[str, Any]]
    seed: Mapped[int] = mapped_column(BigInteger)
    spec: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    lease_expires_at: Mapped[datetime | None]
    worker_host: Mapped[str | None] = mapped_column(String(255))
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]

    checkpoint: Mapped[Checkpoint] = relationship()
    sweeps: Mapped[list[Sweep]] = relationship(secondary="sweep_jobs", back_populates="jobs", viewonly=True)
    result: Mapped[Result | None] = relationship(back_populates="job", uselist=False)


class SweepJob(Base):
    """Which sweeps need which job: one job can serve many sweeps."""

    __tablename__ = "sweep_jobs"

    sweep_id: Mapped[int] = mapped_column(ForeignKey("sweeps.id", ondelete="CASCADE"), primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True, index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The MLflow outbox: a done job whose link has no run id still owes this sweep a child run.
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64))


class Result(Base):
    """The estimate of one job; written once, never overwritten."""

    __tablename__ = "results"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), unique=True)
    llc_mean: Mapped[float | None] = mapped_column(Float)
    llc_std: Mapped[float | None] = mapped_column(Float)
    llc_per_chain: Mapped[list[Any] | None]
    baseline_loss: Mapped[float | None] = mapped_column(Float)
    init_loss: Mapped[float | None] = mapped_column(Float)        # L_m(w*) on a chain's first batch
    loss_wstar: Mapped[float | None] = mapped_column(Float)       # L_n(w*) on the whole dataset, when reported
    nbeta: Mapped[float | None] = mapped_column(Float)
    n: Mapped[int | None] = mapped_column(BigInteger)
    num_draws: Mapped[int | None] = mapped_column(Integer)
    num_chains: Mapped[int | None] = mapped_column(Integer)
    diverged: Mapped[bool] = mapped_column(Boolean, default=False)
    diagnostics: Mapped[dict[str, Any] | None]
    wall_time_s: Mapped[float | None] = mapped_column(Float)
    device: Mapped[str | None] = mapped_column(String(64))
    payload: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    job: Mapped[Job] = relationship(back_populates="result")


class Stage(Base):
    """A developmental stage found on one sweep's λ̂ curve for one hyperparameter setting."""

    __tablename__ = "stages"
    __table_args__ = (
        CheckConstraint("kind IN ('A', 'B', 'other')", name="kind"),
        UniqueConstraint("sweep_id", "setting_key", "start_step"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sweep_id: Mapped[int] = mapped_column(ForeignKey("sweeps.id", ondelete="CASCADE"), index=True)
    setting_key: Mapped[str] = mapped_column(String(64))
    hyperparameters: Mapped[dict[str, Any]]
    start_step: Mapped[int] = mapped_column(BigInteger)
    end_step: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(8))
    llc_change: Mapped[float | None] = mapped_column(Float)
    loss_change: Mapped[float | None] = mapped_column(Float)
    details: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class SchedulerBeat(Base):
    """A live scheduler's heartbeat and what it is doing, for `llc status` (row removed on a clean stop)."""

    __tablename__ = "schedulers"

    owner: Mapped[str] = mapped_column(String(255), primary_key=True)
    state: Mapped[str] = mapped_column(String(32))            # running | recovered | stopping
    detail: Mapped[str | None] = mapped_column(Text)
    in_flight: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(default=utcnow)
