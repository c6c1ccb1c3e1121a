"""Repository functions: every read and state transition of the store, session first.

All state changes are conditional UPDATEs (WHERE status=... AND lease_owner=...), so a
stale scheduler can never overwrite what another one did; claiming uses
`FOR UPDATE SKIP LOCKED` on Postgres and the BEGIN IMMEDIATE transaction that
services.store.db opens on SQLite. Callers commit (use `session_scope`).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from services.store.errors import JobStateError, NotFound
from services.store.jobkey import setting_key
from services.core.status import (
    ACTIVE_STATUSES,
    ACTIVE_SWEEP_STATUSES,
    DONE_STATUSES,
    TERMINAL_STATUSES,
    JobStatus,
    SubmitterKind,
    SweepStatus,
)
from services.store.models import Checkpoint, Job, Result, Stage, Sweep, SweepJob, TrainingRun, utcnow

_CHUNK = 500  # rows per IN (...) / multi-row INSERT: under SQLite's and Postgres' parameter limits
#: pg_advisory_xact_lock key serialising "which sweeps need this job" changes (submit vs cancel)
_MEMBERSHIP_LOCK = 0x11C5_0001


def _serialize_membership(session: Session) -> None:
    """Submit and cancel take turns (Postgres): without it, cancelling sweep A while sweep B,
    sharing A's jobs, commits cancels B's jobs too and B waits forever. Every statement after the
    lock sees the other's committed rows (READ COMMITTED). SQLite's BEGIN IMMEDIATE already
    serialises writers."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_advisory_xact_lock(_MEMBERSHIP_LOCK)))


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _insert(session: Session, table: Any) -> Any:
    """A dialect INSERT that supports ON CONFLICT DO NOTHING."""
    name = session.get_bind().dialect.name
    if name == "postgresql":
        return postgresql.insert(table)
    if name == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"the llc store supports sqlite and postgresql, not {name}; set LLC_DATABASE_URL to one of those.")


def _reload(session: Session, cls: type[Any], ids: Iterable[int]) -> None:
    """Refresh loaded objects a Core UPDATE changed, so callers never see stale state
    (refresh, not expire: the objects stay readable after the session closes)."""
    for ident in ids:
        obj = session.identity_map.get(session.identity_key(cls, ident))
        if obj is not None:
            session.refresh(obj)


def _lease_until(lease_seconds: float) -> datetime:
    if not lease_seconds > 0:
        raise ValueError(f"lease_seconds must be positive, got {lease_seconds!r}.")
    return utcnow() + timedelta(seconds=lease_seconds)


# --- training runs, checkpoints, sweeps --------------------------------------------------

def upsert_training_run(session: Session, *, uri: str) -> TrainingRun:
    """The training run at `uri`, created on first sight (concurrency-safe)."""
    session.execute(_insert(session, TrainingRun).values(uri=uri, created_at=utcnow()).on_conflict_do_nothing())
    return session.scalars(select(TrainingRun).where(TrainingRun.uri == uri)).one()


def upsert_checkpoint(session: Session, *, training_run: TrainingRun, step: int, uri: str, fingerprint: str) -> Checkpoint:
    """The checkpoint row for this content; a rewritten checkpoint (new fingerprint) gets a new row."""
    if not fingerprint:
        raise ValueError(f"checkpoint {uri} has an empty fingerprint; compute its content hash (ETag) first.")
    session.flush()
    session.execute(
        _insert(session, Checkpoint)
        .values(training_run_id=training_run.id, step=int(step), uri=uri, fingerprint=fingerprint, created_at=utcnow())
        .on_conflict_do_nothing()
    )
    ckpt = session.scalars(select(Checkpoint).where(Checkpoint.uri == uri, Checkpoint.fingerprint == fingerprint)).one()
    if ckpt.training_run_id != training_run.id or ckpt.step != int(step):
        raise ValueError(
            f"checkpoint {uri} is already stored as step {ckpt.step} of training run id {ckpt.training_run_id}, "
            f"not step {step} of {training_run.uri}; check the run prefix and step naming."
        )
    return ckpt


def create_sweep(
    session: Session,
    *,
    name: str,
    config: dict[str, Any],
    submitted_by: str,
    training_run: TrainingRun | None,
    submitter_kind: str | None = None,
) -> Sweep:
    """A new sweep (status submitted). `submitter_kind` is person/schedule; default: 'schedule'
    when `submitted_by` starts with 'schedule', else 'person'."""
    kind = submitter_kind or (SubmitterKind.SCHEDULE if submitted_by.startswith("schedule") else SubmitterKind.PERSON)
    if kind not in set(SubmitterKind):
        raise ValueError(f"submitter_kind {kind!r} is not one of {', '.join(SubmitterKind)}.")
    now = utcnow()
    sweep = Sweep(
        name=name,
        config=config,
        submitted_by=submitted_by,
        submitter_kind=str(kind),
        training_run_id=training_run.id if training_run is not None else None,
        status=SweepStatus.SUBMITTED,
        created_at=now,
        updated_at=now,
    )
    session.add(sweep)
    session.flush()
    return sweep


def get_sweep(session: Session, *, sweep_id: int) -> Sweep:
    """The sweep with this id; NotFound (a LookupError) naming the id otherwise."""
    sweep = session.get(Sweep, sweep_id, populate_existing=True)
    if sweep is None:
        raise NotFound(f"there is no sweep with id {sweep_id}; run `llc status` to list the sweeps.")
    return sweep


def list_sweeps(session: Session) -> list[Sweep]:
    """Every sweep, oldest first."""
    return list(session.scalars(select(Sweep).order_by(Sweep.id)).all())


def get_job(session: Session, *, job_id: int) -> Job:
    """The job with this id; NotFound naming the id otherwise."""
    job = session.get(Job, job_id, populate_existing=True)
    if job is None:
        raise NotFound(f"there is no job with id {job_id}.")
    return job


def set_sweep_mlflow_run(session: Session, *, sweep_id: int, run_id: str) -> None:
    if session.execute(update(Sweep).where(Sweep.id == sweep_id).values(mlflow_run_id=run_id, updated_at=utcnow())).rowcount != 1:
        raise NotFound(f"there is no sweep with id {sweep_id}; run `llc status` to list the sweeps.")


def set_job_mlflow_run(session: Session, *, job_id: int, run_id: str) -> None:
    if session.execute(update(Job).where(Job.id == job_id).values(mlflow_run_id=run_id, updated_at=utcnow())).rowcount != 1:
        raise NotFound(f"there is no job with id {job_id}.")


# --- adding jobs -------------------------------------------------------------------------

@dataclass(frozen=True)
class NewJob:
    """One job a sweep needs. `spec` is the JSON of the worker's JobSpec."""

    checkpoint: Checkpoint
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


def _statuses_by_key(session: Session, keys: Sequence[str]) -> dict[str, tuple[int, str]]:
    found: dict[str, tuple[int, str]] = {}
    for chunk in _chunks(keys):
        for key, job_id, status in session.execute(select(Job.key, Job.id, Job.status).where(Job.key.in_(chunk))):
            found[key] = (job_id, status)
    return found


def add_jobs(session: Session, *, sweep: Sweep, jobs: Sequence[NewJob]) -> AddJobsOutcome:
    """Link `jobs` to `sweep`, creating the keys not stored yet; a finished key is never re-run.

    Failed or cancelled keys are put back to pending (attempts reset), since the new sweep asks
    for them again. Safe against a concurrent submission of the same keys.
    """
    if sweep.status == SweepStatus.CANCELLED:
        raise JobStateError(f"sweep {sweep.id} ({sweep.name}) is cancelled; submit a new sweep instead of adding jobs to it.")
    session.flush()
    _serialize_membership(session)
    by_key: dict[str, NewJob] = {}
    duplicates = 0
    for job in jobs:
        if job.key in by_key:
            duplicates += 1
        else:
            by_key[job.key] = job
    keys = list(by_key)
    existing = _statuses_by_key(session, keys)
    now = utcnow()

    created: set[str] = set()
    missing = [k for k in keys if k not in existing]
    for chunk in _chunks(missing):
        rows = [
            dict(
                key=k,
                checkpoint_id=by_key[k].checkpoint.id,
                hyperparameters=by_key[k].hyperparameters,
                seed=int(by_key[k].seed),
                spec=by_key[k].spec,
                status=JobStatus.PENDING,
                attempts=0,
                created_at=now,
                updated_at=now,
            )
            for k in chunk
        ]
        stmt = _insert(session, Job).values(rows).on_conflict_do_nothing(index_elements=["key"]).returning(Job.key)
        created.update(session.scalars(stmt).all())
    if missing:
        existing.update(_statuses_by_key(session, missing))

    already_done = already_queued = requeued = 0
    for key in keys:
        job_id, status = existing[key]
        if key in created:
            continue
        if status in DONE_STATUSES:
            already_done += 1
        elif status in ACTIVE_STATUSES:
            already_queued += 1
        else:  # failed / cancelled: asked for again
            changed = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.status.in_([JobStatus.FAILED, JobStatus.CANCELLED]))
                .values(status=JobStatus.PENDING, attempts=0, error=None, lease_owner=None, lease_expires_at=None,
                        finished_at=None, updated_at=now)
            ).rowcount
            if changed:
                requeued += 1
            else:
                already_queued += 1

    job_ids = [existing[k][0] for k in keys]
    for chunk in _chunks(job_ids):
        session.execute(
            _insert(session, SweepJob)
            .values([dict(sweep_id=sweep.id, job_id=j, created_at=now) for j in chunk])
            .on_conflict_do_nothing()
        )
    _refresh_sweeps(session, [sweep.id])
    _reload(session, Job, job_ids)
    return AddJobsOutcome(
        new=len(created) + requeued,
        already_done=already_done,
        already_queued=already_queued + duplicates,
        requeued=requeued,
        job_ids=tuple(job_ids),
    )


# --- sweep status ------------------------------------------------------------------------

def sweep_counts(session: Session, *, sweep_id: int) -> dict[str, int]:
    """Job status -> number of this sweep's jobs in it (every status present, zeros included)."""
    counts = {str(s): 0 for s in JobStatus}
    rows = session.execute(
        select(Job.status, func.count())
        .join(SweepJob, SweepJob.job_id == Job.id)
        .where(SweepJob.sweep_id == sweep_id)
        .group_by(Job.status)
    )
    for status, n in rows:
        counts[status] = int(n)
    return counts


def sweep_is_finished(session: Session, *, sweep_id: int) -> bool:
    """True when the sweep was cancelled or every one of its jobs reached a terminal state."""
    sweep = get_sweep(session, sweep_id=sweep_id)
    if sweep.status == SweepStatus.CANCELLED:
        return True
    counts = sweep_counts(session, sweep_id=sweep_id)
    return not any(counts[s] for s in ACTIVE_STATUSES)


def _sweeps_of_jobs(session: Session, job_ids: Sequence[int]) -> list[int]:
    ids: set[int] = set()
    for chunk in _chunks(list(job_ids)):
        ids.update(session.scalars(select(SweepJob.sweep_id).where(SweepJob.job_id.in_(chunk))).all())
    return sorted(ids)


def _refresh_sweeps(session: Session, sweep_ids: Iterable[int]) -> None:
    """Derive each non-cancelled sweep's status from its jobs: all terminal -> finished,
    any started or done -> running, else submitted."""
    now = utcnow()
    for sweep_id in sweep_ids:
        current = session.scalar(select(Sweep.status).where(Sweep.id == sweep_id))
        if current is None or current == SweepStatus.CANCELLED:
            continue
        counts = sweep_counts(session, sweep_id=sweep_id)
        active = sum(counts[s] for s in ACTIVE_STATUSES)
        if active == 0:
            status = SweepStatus.FINISHED
        elif active < sum(counts.values()) or counts[JobStatus.RUNNING]:
            status = SweepStatus.RUNNING
        else:
            status = SweepStatus.SUBMITTED
        if status != current:
            values: dict[str, Any] = dict(status=status, updated_at=now)
            values["finished_at"] = now if status == SweepStatus.FINISHED else None
            session.execute(update(Sweep).where(Sweep.id == sweep_id, Sweep.status != SweepStatus.CANCELLED).values(**values))
            _reload(session, Sweep, [sweep_id])


def cancel_sweep(session: Session, *, sweep_id: int) -> list[int]:
    """Cancel the sweep and those of its pending/running jobs no other active sweep needs.

    Returns the ids of the jobs cancelled (running ones included, so the scheduler can cancel
    their Ray tasks); results a cancelled running job later reports are refused.
    """
    _serialize_membership(session)
    sweep = get_sweep(session, sweep_id=sweep_id)
    now = utcnow()
    session.execute(update(Sweep).where(Sweep.id == sweep.id).values(status=SweepStatus.CANCELLED, updated_at=now, finished_at=now))
    other_active = (
        select(SweepJob.job_id)
        .join(Sweep, Sweep.id == SweepJob.sweep_id)
        .where(SweepJob.sweep_id != sweep.id, Sweep.status.in_(ACTIVE_SWEEP_STATUSES))
    )
    candidates = select(SweepJob.job_id).where(SweepJob.sweep_id == sweep.id)
    ids = list(
        session.scalars(
            select(Job.id)
            .where(Job.id.in_(candidates), Job.status.in_(ACTIVE_STATUSES), Job.id.not_in(other_active))
            .order_by(Job.id)
            .with_for_update()
        ).all()
    )
    cancelled: list[int] = []
    for chunk in _chunks(ids):
        result = session.execute(
            update(Job)
            .where(Job.id.in_(chunk), Job.status.in_(ACTIVE_STATUSES))
            .values(status=JobStatus.CANCELLED, lease_owner=None, lease_expires_at=None, finished_at=now, updated_at=now,
                    error=f"cancelled with sweep {sweep.id}")
            .returning(Job.id)
        )
        cancelled.extend(result.scalars().all())
    _reload(session, Sweep, [sweep.id])
    _reload(session, Job, cancelled)
    return sorted(cancelled)


# --- claiming and leases -----------------------------------------------------------------

def claim_jobs(session: Session, *, owner: str, limit: int, lease_seconds: float, sweep_id: int | None = None) -> list[Job]:
    """Atomically claim up to `limit` pending jobs for `owner` (oldest first; only `sweep_id`'s
    when given): status running, attempts + 1, lease until now + lease_seconds.
    Two claimers never get the same job."""
    if limit <= 0:
        return []
    if not owner:
        raise ValueError("claim_jobs needs a non-empty owner (e.g. 'scheduler@host:pid').")
    until = _lease_until(lease_seconds)
    now = utcnow()
    query = select(Job.id).where(Job.status == JobStatus.PENDING)
    if sweep_id is not None:
        query = query.where(Job.id.in_(select(SweepJob.job_id).where(SweepJob.sweep_id == sweep_id)))
    candidates = list(session.scalars(query.order_by(Job.id).limit(limit).with_for_update(skip_locked=True)).all())
    if not candidates:
        return []
    # Conditional on status, whatever the isolation: a row another claimer took is skipped.
    claimed = sorted(session.scalars(
        update(Job)
        .where(Job.id.in_(candidates), Job.status == JobStatus.PENDING)
        .values(status=JobStatus.RUNNING, attempts=Job.attempts + 1, lease_owner=owner, lease_expires_at=until,
                started_at=now, updated_at=now, error=None)
        .returning(Job.id)
    ).all())
    if not claimed:
        return []
    _refresh_sweeps(session, _sweeps_of_jobs(session, claimed))
    jobs = session.scalars(select(Job).where(Job.id.in_(claimed)).order_by(Job.id).execution_options(populate_existing=True)).all()
    return list(jobs)


def renew_leases(session: Session, *, owner: str, job_ids: Sequence[int], lease_seconds: float) -> int:
    """Extend `owner`'s leases on these running jobs; returns how many it still held."""
    if not job_ids:
        return 0
    until = _lease_until(lease_seconds)
    renewed = 0
    for chunk in _chunks(list(job_ids)):
        renewed += session.execute(
            update(Job)
            .where(Job.id.in_(chunk), Job.status == JobStatus.RUNNING, Job.lease_owner == owner)
            .values(lease_expires_at=until, updated_at=utcnow())
        ).rowcount
    return renewed


def release_expired_leases(session: Session, *, max_attempts: int = 3) -> int:
    """Return running jobs whose lease expired to pending; those that already used
    `max_attempts` attempts become failed instead. Returns how many jobs changed."""
    now = utcnow()
    expired = session.execute(
        select(Job.id, Job.attempts, Job.lease_owner)
        .where(Job.status == JobStatus.RUNNING, Job.lease_expires_at < now)
        .order_by(Job.id)
        .with_for_update(skip_locked=True)
    ).all()
    changed: list[int] = []
    for job_id, attempts, owner in expired:
        base = update(Job).where(Job.id == job_id, Job.status == JobStatus.RUNNING, Job.lease_expires_at < now)
        if attempts >= max_attempts:
            stmt = base.values(status=JobStatus.FAILED, lease_owner=None, lease_expires_at=None, finished_at=now, updated_at=now,
                               error=f"lease expired on attempt {attempts} of {max_attempts} (last owner {owner}); gave up")
        else:
            stmt = base.values(status=JobStatus.PENDING, lease_owner=None, lease_expires_at=None, updated_at=now,
                               error=f"lease expired on attempt {attempts} of {max_attempts} (last owner {owner}); requeued")
        if session.execute(stmt).rowcount == 1:
            changed.append(job_id)
    if changed:
        _refresh_sweeps(session, _sweeps_of_jobs(session, changed))
        _reload(session, Job, changed)
    return len(changed)


def release_owner_jobs(session: Session, *, owner: str) -> int:
    """Graceful shutdown: `owner`'s running jobs go back to pending, and the interrupted
    attempt is not counted against them. Returns how many were released."""
    now = utcnow()
    ids = list(session.scalars(
        select(Job.id).where(Job.status == JobStatus.RUNNING, Job.lease_owner == owner).with_for_update()
    ).all())
    released = 0
    for chunk in _chunks(ids):
        released += session.execute(
            update(Job)
            .where(Job.id.in_(chunk), Job.status == JobStatus.RUNNING, Job.lease_owner == owner)
            .values(status=JobStatus.PENDING, lease_owner=None, lease_expires_at=None, updated_at=now,
                    attempts=case((Job.attempts > 0, Job.attempts - 1), else_=0))
        ).rowcount
    if ids:
        _refresh_sweeps(session, _sweeps_of_jobs(session, ids))
        _reload(session, Job, ids)
    return released


# --- results and failures ----------------------------------------------------------------

_RESULT_FIELDS: dict[str, tuple[str, ...]] = {
    # column: accepted keys in the result dict, first match wins
    "llc_mean": ("llc_mean", "mean"),
    "llc_std": ("llc_std", "std"),
    "llc_per_chain": ("llc_per_chain", "llc_chains", "per_chain"),
    "baseline_loss": ("baseline_loss", "loss_at_wstar", "init_loss_full"),
    "init_loss": ("init_loss",),
    "nbeta": ("nbeta", "n_beta"),
    "n": ("n", "num_samples", "dataset_size"),
    "num_draws": ("num_draws", "draws"),
    "num_chains": ("num_chains", "chains"),
    "diagnostics": ("diagnostics",),
    "wall_time_s": ("wall_time_s", "wall_time", "seconds"),
    "device": ("device",),
}


def _json_safe(value: Any) -> Any:
    """JSON columns cannot hold NaN/inf (Postgres rejects them): store those as None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    item = getattr(value, "item", None)
    if callable(item) and not isinstance(value, (str, bytes)):
        try:
            return _json_safe(item())
        except (ValueError, TypeError):
            pass
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return _json_safe(tolist())
    return value


PAYLOAD_MAX_ARRAY = 256


def _count_leaves(value: Any) -> int:
    if isinstance(value, list):
        return sum(_count_leaves(v) for v in value)
    return 1


def _compact_payload(result: dict[str, Any]) -> dict[str, Any]:
    """The result dict as JSON, with long arrays (per-draw traces) left out: MLflow keeps those."""
    out: dict[str, Any] = {}
    for key, value in result.items():
        safe = _json_safe(value)
        if isinstance(safe, list) and _count_leaves(safe) > PAYLOAD_MAX_ARRAY:
            safe = {"omitted": f"{_count_leaves(safe)} values (traces are logged to MLflow)"}
        out[str(key)] = safe
    return out


def _float_or_none(value: Any) -> float | None:
    if value is None:
        return None
    v = float(value)
    return v if math.isfinite(v) else None


def _write_refusal(*, action: str, job_id: int, status: str | None, lease_owner: str | None,
                   owner: str | None, given_twice: bool = False) -> str | None:
    """Why a write to this job must be refused (one sentence), or None when it may proceed."""
    if status is None:
        return f"cannot {action} for job {job_id}: there is no such job; nothing was written."
    if given_twice or status in TERMINAL_STATUSES:
        done = "succeeded or diverged (given twice in this batch)" if given_twice else status
        return f"cannot {action} for job {job_id}: it is already {done}; nothing was overwritten."
    if owner is not None and (status != JobStatus.RUNNING or lease_owner != owner):
        holder = f"held by {lease_owner}" if lease_owner else "not claimed"
        return (f"cannot {action} for job {job_id}: {owner} no longer holds its lease "
                f"(it is {status}, {holder}); nothing was written.")
    return None


def _lock_job_for_write(session: Session, *, job_id: int, owner: str | None, action: str) -> Job:
    job = session.scalars(select(Job).where(Job.id == job_id).with_for_update().execution_options(populate_existing=True)).one_or_none()
    refusal = _write_refusal(action=action, job_id=job_id, status=job.status if job else None,
                             lease_owner=job.lease_owner if job else None, owner=owner)
    if refusal:
        raise JobStateError(refusal)
    assert job is not None
    return job


def _result_columns(result: dict[str, Any]) -> dict[str, Any]:
    """The Result columns that the known keys of a result dict fill (see record_result)."""
    values: dict[str, Any] = {}
    for column, names in _RESULT_FIELDS.items():
        for name in names:
            if name in result:
                values[column] = result[name]
                break
    for column in ("llc_mean", "llc_std", "baseline_loss", "init_loss", "nbeta", "wall_time_s"):
        if column in values:
            values[column] = _float_or_none(values[column])
    for column in ("n", "num_draws", "num_chains"):
        if values.get(column) is not None:
            values[column] = int(values[column])
    for column in ("llc_per_chain", "diagnostics"):
        if column in values:
            values[column] = _json_safe(values[column])
    if values.get("device") is not None:
        values["device"] = str(values["device"])
    diagnostics = values.get("diagnostics")
    if values.get("wall_time_s") is None and isinstance(diagnostics, dict):
        values["wall_time_s"] = _float_or_none(diagnostics.get("wall_time_s"))
    if values.get("num_chains") is None and isinstance(values.get("llc_per_chain"), list):
        values["num_chains"] = len(values["llc_per_chain"])
    trace = _json_safe(result.get("loss_trace"))
    if values.get("num_draws") is None and isinstance(trace, list) and trace and isinstance(trace[0], list):
        values["num_draws"] = len(trace[0])
    return values


def record_result(
    session: Session,
    *,
    job_id: int,
    owner: str | None,
    result: dict[str, Any],
    diverged: bool,
    mlflow_run_id: str | None = None,
) -> Result:
    """Store a job's estimate and mark it succeeded (or diverged: a final result, not a retry).

    `owner` given: only while that owner holds the job. Refused (JobStateError, nothing
    written) for unknown, finished or cancelled jobs. Known keys of `result` fill columns
    (llc_mean, llc_std, llc_per_chain, baseline_loss, init_loss, nbeta, n, num_draws/draws,
    num_chains/chains, diagnostics, wall_time_s, device, worker_host/host; wall time, chains and
    draws fall back to diagnostics["wall_time_s"], len(llc_per_chain) and loss_trace's shape).
    The dict is kept in Result.payload (arrays over 256 values left out), non-finite numbers
    stored as null.
    """
    job = _lock_job_for_write(session, job_id=job_id, owner=owner, action="record a result")
    values = _result_columns(result)
    now = utcnow()
    row = Result(job_id=job.id, diverged=bool(diverged), payload=_compact_payload(result), created_at=now, **values)
    session.add(row)
    job.status = JobStatus.DIVERGED if diverged else JobStatus.SUCCEEDED
    job.lease_owner = None
    job.lease_expires_at = None
    job.finished_at = now
    job.updated_at = now
    job.error = None
    host = result.get("worker_host") or result.get("host")
    if host:
        job.worker_host = str(host)
    if mlflow_run_id:
        job.mlflow_run_id = mlflow_run_id
    session.flush()
    _refresh_sweeps(session, _sweeps_of_jobs(session, [job.id]))
    return row


@dataclass(frozen=True)
class NewResult:
    """One finished job's result for `record_results` (same meaning as record_result's arguments)."""

    job_id: int
    result: dict[str, Any]
    diverged: bool
    mlflow_run_id: str | None = None


@dataclass
class RecordedResults:
    """What `record_results` did: the job ids it stored (in the order given) and, for each
    refused one, the reason (the message record_result's JobStateError would carry)."""

    stored: list[int] = field(default_factory=list)
    refused: dict[int, str] = field(default_factory=dict)


def record_results(session: Session, *, owner: str | None, results: Sequence[NewResult]) -> RecordedResults:
    """record_result for a batch, in the caller's one transaction: one locking SELECT, one
    multi-row INSERT of the results, one executemany UPDATE of the jobs, one status refresh per
    sweep touched. The same refusal rules, per job and without raising: an unknown, finished
    (succeeded, diverged, failed) or cancelled job, or (with `owner`) one that owner no longer
    holds, is refused and nothing is written for it; a job given twice is stored once, the second
    is refused. The others are stored."""
    out = RecordedResults()
    if not results:
        return out
    ids = sorted({r.job_id for r in results})
    current: dict[int, tuple[str, str | None, str | None, str | None]] = {}
    for chunk in _chunks(ids):
        rows = session.execute(select(Job.id, Job.status, Job.lease_owner, Job.worker_host, Job.mlflow_run_id)
                               .where(Job.id.in_(chunk)).order_by(Job.id).with_for_update())
        for job_id, status, lease_owner, host, run_id in rows:
            current[job_id] = (status, lease_owner, host, run_id)
    now = utcnow()
    result_rows: list[dict[str, Any]] = []
    job_rows: list[dict[str, Any]] = []
    taken: set[int] = set()
    action = "record a result"
    for r in results:
        job_id = r.job_id
        status, lease_owner, host, run_id = current.get(job_id, (None, None, None, None))
        refusal = _write_refusal(action=action, job_id=job_id, status=status, lease_owner=lease_owner, owner=owner,
                                 given_twice=job_id in taken)
        if refusal:
            out.refused[job_id] = refusal
            continue
        taken.add(job_id)
        values = _result_columns(r.result)
        result_rows.append(dict(values, job_id=job_id, diverged=bool(r.diverged), payload=_compact_payload(r.result),
                                created_at=now))
        new_host = r.result.get("worker_host") or r.result.get("host")
        job_rows.append(dict(id=job_id, status=JobStatus.DIVERGED if r.diverged else JobStatus.SUCCEEDED,
                             lease_owner=None, lease_expires_at=None, finished_at=now, updated_at=now, error=None,
                             worker_host=str(new_host) if new_host else host, mlflow_run_id=r.mlflow_run_id or run_id))
        out.stored.append(job_id)
    if not out.stored:
        return out
    by_columns: dict[frozenset[str], list[dict[str, Any]]] = {}
    for row in result_rows:  # one executemany per column set (as record_result, absent keys stay SQL NULL)
        by_columns.setdefault(frozenset(row), []).append(row)
    for rows_alike in by_columns.values():
        for chunk in _chunks(rows_alike, 100):
            session.execute(Result.__table__.insert(), list(chunk))
    session.execute(update(Job), job_rows)  # ORM bulk UPDATE by primary key: one executemany
    _refresh_sweeps(session, _sweeps_of_jobs(session, out.stored))
    _reload(session, Job, out.stored)
    return out


def record_failure(session: Session, *, job_id: int, owner: str | None, error: str, retry: bool, max_attempts: int = 3) -> None:
    """Record a failed attempt: back to pending when `retry` and attempts < max_attempts,
    else failed. Refused (JobStateError) for unknown or finished jobs."""
    job = _lock_job_for_write(session, job_id=job_id, owner=owner, action="record a failure")
    now = utcnow()
    job.error = error
    job.lease_owner = None
    job.lease_expires_at = None
    job.updated_at = now
    if retry and job.attempts < max_attempts:
        job.status = JobStatus.PENDING
    else:
        job.status = JobStatus.FAILED
        job.finished_at = now
    session.flush()
    _refresh_sweeps(session, _sweeps_of_jobs(session, [job.id]))


# --- reading results ---------------------------------------------------------------------

@dataclass(frozen=True)
class ResultRow:
    """One of a sweep's jobs with its result (result fields None until it has one)."""

    job_id: int
    step: int
    checkpoint_uri: str
    hyperparameters: dict[str, Any]
    seed: int
    status: str
    llc_mean: float | None
    llc_std: float | None
    llc_per_chain: list[Any] | None
    init_loss: float | None
    diagnostics: dict[str, Any] | None
    error: str | None
    baseline_loss: float | None = None
    nbeta: float | None = None
    diverged: bool = False
    key: str = ""
    wall_time_s: float | None = None
    mlflow_run_id: str | None = None


def sweep_results(session: Session, *, sweep_id: int) -> list[ResultRow]:
    """Every job of the sweep (any status) with its result, ordered by step, then job id."""
    get_sweep(session, sweep_id=sweep_id)
    rows = session.execute(
        select(Job, Checkpoint, Result)
        .join(SweepJob, SweepJob.job_id == Job.id)
        .join(Checkpoint, Checkpoint.id == Job.checkpoint_id)
        .outerjoin(Result, Result.job_id == Job.id)
        .where(SweepJob.sweep_id == sweep_id)
        .order_by(Checkpoint.step, Job.id)
        .execution_options(populate_existing=True)
    ).all()
    out: list[ResultRow] = []
    for job, ckpt, res in rows:
        out.append(ResultRow(
            job_id=job.id,
            step=int(ckpt.step),
            checkpoint_uri=ckpt.uri,
            hyperparameters=dict(job.hyperparameters),
            seed=int(job.seed),
            status=str(job.status),
            llc_mean=res.llc_mean if res else None,
            llc_std=res.llc_std if res else None,
            llc_per_chain=res.llc_per_chain if res else None,
            init_loss=res.init_loss if res else None,
            diagnostics=res.diagnostics if res else None,
            error=job.error,
            baseline_loss=res.baseline_loss if res else None,
            nbeta=res.nbeta if res else None,
            diverged=bool(res.diverged) if res else False,
            key=job.key,
            wall_time_s=res.wall_time_s if res else None,
            mlflow_run_id=job.mlflow_run_id,
        ))
    return out


# --- stages ------------------------------------------------------------------------------

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


def replace_stages(session: Session, *, sweep_id: int, stages: Sequence[StageRow]) -> None:
    """Replace all of the sweep's stages with `stages` (re-aggregation never duplicates)."""
    get_sweep(session, sweep_id=sweep_id)
    for s in stages:
        if s.kind not in ("A", "B", "other"):
            raise ValueError(f"stage kind {s.kind!r} is not 'A', 'B' or 'other'.")
        if s.end_step < s.start_step:
            raise ValueError(f"stage from step {s.start_step} to {s.end_step} ends before it starts.")
    session.execute(delete(Stage).where(Stage.sweep_id == sweep_id))
    now = utcnow()
    for s in stages:
        session.add(Stage(
            sweep_id=sweep_id,
            setting_key=setting_key(s.hyperparameters),
            hyperparameters=dict(s.hyperparameters),
            start_step=int(s.start_step),
            end_step=int(s.end_step),
            kind=s.kind,
            llc_change=_float_or_none(s.llc_change),
            loss_change=_float_or_none(s.loss_change),
            details=_json_safe(s.details) if s.details is not None else None,
            created_at=now,
        ))
    session.flush()


def list_stages(session: Session, *, sweep_id: int) -> list[Stage]:
    """The sweep's stages ordered by setting, then start step."""
    return list(session.scalars(
        select(Stage).where(Stage.sweep_id == sweep_id).order_by(Stage.setting_key, Stage.start_step)
    ).all())
