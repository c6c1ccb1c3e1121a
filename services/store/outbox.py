"""The MLflow outbox: what the tracking server is still owed, kept in the store.

A stored result owes each sweep that asked for it a child run (`sweep_jobs.mlflow_run_id` is
null until logged); an ended sweep owes its parent run's final state and its aggregate
(`sweeps.mlflow_synced_at` is null until done). Whoever runs next (a scheduler's follow-up
thread, `llc sync-mlflow`) pays the debt, so a killed scheduler or an MLflow outage loses
nothing. A short lease on the sweep keeps two syncers from logging it at once.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from services.core.status import DONE_STATUSES, JobStatus, SweepStatus
from services.store.models import Checkpoint, Job, Result, Sweep, SweepJob, utcnow
from services.store.results import result_columns


@dataclass(frozen=True)
class OwedRun:
    """A sweep's done job without its MLflow child run yet."""

    sweep_id: int
    job_id: int
    key: str
    step: int
    hyperparameters: dict[str, Any]
    seed: int
    result: dict[str, Any]           # the stored result (JobResult.to_dict shape, long arrays left out)


_ENDED = (SweepStatus.FINISHED, SweepStatus.CANCELLED)


def owed_sweeps(session: Session, *, sweep_id: int | None = None) -> list[int]:
    """Sweeps that owe MLflow something: a child run, or (ended) their final state and aggregate."""
    children = (select(SweepJob.sweep_id).join(Job, Job.id == SweepJob.job_id)
                .where(SweepJob.mlflow_run_id.is_(None), Job.status.in_(list(DONE_STATUSES))))
    ended = select(Sweep.id).where(Sweep.status.in_(list(_ENDED)), Sweep.mlflow_synced_at.is_(None))
    if sweep_id is not None:
        children = children.where(SweepJob.sweep_id == sweep_id)
        ended = ended.where(Sweep.id == sweep_id)
    ids = set(session.scalars(children.distinct()).all()) | set(session.scalars(ended).all())
    return sorted(ids)


def take_sync_lease(session: Session, *, sweep_id: int, owner: str, seconds: float) -> bool:
    """Hold the sweep for syncing (free, expired or already ours); False when another syncer has it."""
    now = utcnow()
    return session.execute(
        update(Sweep).where(Sweep.id == sweep_id, or_(Sweep.mlflow_sync_owner.is_(None), Sweep.mlflow_sync_owner == owner,
                                                       Sweep.mlflow_sync_until < now))
        .values(mlflow_sync_owner=owner, mlflow_sync_until=now + timedelta(seconds=seconds))
    ).rowcount == 1


def release_sync_lease(session: Session, *, sweep_id: int, owner: str) -> None:
    session.execute(update(Sweep).where(Sweep.id == sweep_id, Sweep.mlflow_sync_owner == owner)
                    .values(mlflow_sync_owner=None, mlflow_sync_until=None))


def owed_runs(session: Session, *, sweep_id: int, limit: int = 100) -> list[OwedRun]:
    """Up to `limit` of the sweep's done jobs still owing a child run, by step."""
    rows = session.execute(
        select(Job, Checkpoint.step, Result)
        .join(SweepJob, and_(SweepJob.job_id == Job.id, SweepJob.sweep_id == sweep_id))
        .join(Checkpoint, Checkpoint.id == Job.checkpoint_id)
        .join(Result, Result.job_id == Job.id)
        .where(SweepJob.mlflow_run_id.is_(None), Job.status.in_(list(DONE_STATUSES)))
        .order_by(Checkpoint.step, Job.id).limit(limit)
    ).all()
    return [OwedRun(sweep_id=sweep_id, job_id=job.id, key=job.key, step=int(step), hyperparameters=dict(job.hyperparameters),
                    seed=int(job.seed), result=_result_dict(res)) for job, step, res in rows]


def _result_dict(res: Result) -> dict[str, Any]:
    """The stored payload with the columns (the mapping of `result_columns`, read back)."""
    data = dict(res.payload or {})
    for key in result_columns({}, diverged=False):
        if key not in ("payload",) and getattr(res, key, None) is not None:
            data[key] = getattr(res, key)
    data["diverged"] = bool(res.diverged)
    return data


def set_child_runs(session: Session, *, sweep_id: int, runs: dict[int, str]) -> None:
    """Record the child runs logged for the sweep (job id → run id); the first also names the job's run."""
    for job_id, run_id in runs.items():
        session.execute(update(SweepJob).where(SweepJob.sweep_id == sweep_id, SweepJob.job_id == job_id)
                        .values(mlflow_run_id=run_id))
        session.execute(update(Job).where(Job.id == job_id, Job.mlflow_run_id.is_(None)).values(mlflow_run_id=run_id))


def final_run_status(session: Session, *, sweep_id: int) -> str | None:
    """The MLflow status the sweep's parent run ends with (None while the sweep is active):
    KILLED when cancelled, FAILED when any of its jobs failed, else FINISHED."""
    status = session.scalar(select(Sweep.status).where(Sweep.id == sweep_id))
    if status == SweepStatus.CANCELLED:
        return "KILLED"
    if status != SweepStatus.FINISHED:
        return None
    failed = session.scalar(select(Job.id).join(SweepJob, SweepJob.job_id == Job.id)
                            .where(SweepJob.sweep_id == sweep_id, Job.status == JobStatus.FAILED).limit(1))
    return "FAILED" if failed is not None else "FINISHED"


def mark_synced(session: Session, *, sweep_id: int) -> None:
    session.execute(update(Sweep).where(Sweep.id == sweep_id).values(mlflow_synced_at=utcnow()))


def owed_count(session: Session, *, sweep_ids: Sequence[int]) -> int:
    """How many child runs these sweeps are still owed (for `llc sync-mlflow`'s report)."""
    if not sweep_ids:
        return 0
    return len(session.execute(
        select(SweepJob.job_id).join(Job, Job.id == SweepJob.job_id)
        .where(SweepJob.sweep_id.in_(list(sweep_ids)), SweepJob.mlflow_run_id.is_(None),
               Job.status.in_(list(DONE_STATUSES)))).all())
