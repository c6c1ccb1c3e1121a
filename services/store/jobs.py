"""Jobs: adding a sweep's jobs (reusing finished keys), claiming with leases, failures.

Every state change is a conditional UPDATE (WHERE status=... AND lease_owner=...), so a stale
scheduler can never overwrite what another one did; claiming uses `FOR UPDATE SKIP LOCKED` on
Postgres and the BEGIN IMMEDIATE transaction services.store.db opens on SQLite.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import case, func, select, update
from sqlalchemy.orm import Session

from services.core.status import ACTIVE_STATUSES, DONE_STATUSES, TERMINAL_STATUSES, JobStatus, SweepStatus
from services.store.entities import AddJobsOutcome, JobInfo, PlannedJob, RecordedFailure
from services.store.errors import JobStateError, NotFound
from services.store.models import Checkpoint, Job, Sweep, SweepJob, utcnow
from services.store.sql import INSERT_CHUNK, in_chunks, insert, lease_until, serialize_membership
from services.store.sweeps import checkpoint_ids, derive_status, derive_status_of_jobs, finish_done, mark_running

_JOB_COLUMNS = (Job.id, Job.key, Checkpoint.uri, Checkpoint.step, Job.hyperparameters, Job.seed, Job.spec, Job.status,
                Job.attempts, Job.error, Job.lease_owner, Job.lease_expires_at, Job.worker_host, Job.mlflow_run_id,
                Job.started_at, Job.finished_at)


def _job_infos(session: Session, where: Any) -> list[JobInfo]:
    rows = session.execute(select(*_JOB_COLUMNS).join(Checkpoint, Checkpoint.id == Job.checkpoint_id).where(where)
                           .order_by(Job.id))
    return [JobInfo(id=r[0], key=r[1], checkpoint_uri=r[2], step=int(r[3]), hyperparameters=dict(r[4]), seed=int(r[5]),
                    spec=dict(r[6]), status=r[7], attempts=r[8], error=r[9], lease_owner=r[10], lease_expires_at=r[11],
                    worker_host=r[12], mlflow_run_id=r[13], started_at=r[14], finished_at=r[15]) for r in rows]


def get_job(session: Session, *, job_id: int) -> JobInfo:
    """The job with this id; NotFound naming the id otherwise."""
    found = _job_infos(session, Job.id == job_id)
    if not found:
        raise NotFound(f"there is no job with id {job_id}.")
    return found[0]


def set_job_mlflow_run(session: Session, *, job_id: int, run_id: str) -> None:
    if session.execute(update(Job).where(Job.id == job_id).values(mlflow_run_id=run_id, updated_at=utcnow())).rowcount != 1:
        raise NotFound(f"there is no job with id {job_id}.")


def job_statuses(session: Session, job_ids: Sequence[int]) -> dict[int, str]:
    out: dict[int, str] = {}
    for chunk in in_chunks(list(job_ids)):
        out.update((job_id, status) for job_id, status in session.execute(select(Job.id, Job.status).where(Job.id.in_(chunk))))
    return out


def job_holders(session: Session, job_ids: Sequence[int]) -> dict[int, tuple[str, str | None]]:
    """job id → (status, lease owner): whether a scheduler's in-flight job is still its own."""
    out: dict[int, tuple[str, str | None]] = {}
    for chunk in in_chunks(list(job_ids)):
        rows = session.execute(select(Job.id, Job.status, Job.lease_owner).where(Job.id.in_(chunk)))
        out.update((job_id, (status, owner)) for job_id, status, owner in rows)
    return out


def remaining(session: Session, *, sweep_id: int | None) -> int:
    """Pending + running jobs (in one sweep, or of any sweep)."""
    q = select(func.count(func.distinct(Job.id))).select_from(Job).join(SweepJob, SweepJob.job_id == Job.id).where(
        Job.status.in_(list(ACTIVE_STATUSES)))
    if sweep_id is not None:
        q = q.where(SweepJob.sweep_id == sweep_id)
    return int(session.scalar(q) or 0)


def note_jobs(session: Session, *, owner: str, notes: dict[int, str | None]) -> None:
    """Set (or clear, None) why this owner's running jobs are stuck; `llc status` shows the note."""
    for note in set(notes.values()):
        ids = [i for i, n in notes.items() if n == note]
        session.execute(update(Job).where(Job.id.in_(ids), Job.lease_owner == owner, Job.status == JobStatus.RUNNING)
                        .values(error=note))


# --- adding jobs -------------------------------------------------------------------------

def _existing(session: Session, keys: Sequence[str]) -> dict[str, tuple[int, str]]:
    found: dict[str, tuple[int, str]] = {}
    for chunk in in_chunks(keys):
        for key, job_id, status in session.execute(select(Job.key, Job.id, Job.status).where(Job.key.in_(chunk))):
            found[key] = (job_id, status)
    return found


def add_jobs(session: Session, *, sweep_id: int, jobs: Sequence[PlannedJob]) -> AddJobsOutcome:
    """Link `jobs` to the sweep, creating the keys not stored yet; a finished key is never re-run.

    Their checkpoints must be stored (upsert_checkpoints). Failed or cancelled keys are put back
    to pending (attempts reset), since the new sweep asks for them again. Set-based: one lookup
    of the keys, bulk inserts of the new jobs and of the links, one UPDATE for the requeued.
    Safe against a concurrent submission of the same keys.
    """
    serialize_membership(session)
    status = session.scalar(select(Sweep.status).where(Sweep.id == sweep_id))
    if status is None:
        raise NotFound(f"there is no sweep with id {sweep_id}; run `llc status` to list the sweeps.")
    if status == SweepStatus.CANCELLED:
        raise JobStateError(f"sweep {sweep_id} is cancelled; submit a new sweep instead of adding jobs to it.")
    by_key: dict[str, PlannedJob] = {}
    for job in jobs:
        by_key.setdefault(job.key, job)
    duplicates = len(jobs) - len(by_key)
    keys = list(by_key)
    existing = _existing(session, keys)
    now = utcnow()

    missing = [k for k in keys if k not in existing]
    created: set[str] = set()
    if missing:
        stored = checkpoint_ids(session, [by_key[k].checkpoint for k in missing])
        rows = []
        for k in missing:
            job = by_key[k]
            ckpt = stored.get((job.checkpoint.uri, job.checkpoint.fingerprint))
            if ckpt is None:
                raise ValueError(f"checkpoint {job.checkpoint.uri} is not stored; call upsert_checkpoints before add_jobs.")
            rows.append(dict(key=k, checkpoint_id=ckpt.id, hyperparameters=job.hyperparameters, seed=int(job.seed),
                             spec=job.spec, status=JobStatus.PENDING, attempts=0, created_at=now, updated_at=now))
        for i in range(0, len(rows), INSERT_CHUNK):
            stmt = (insert(session, Job).values(rows[i:i + INSERT_CHUNK]).on_conflict_do_nothing(index_elements=["key"])
                    .returning(Job.key, Job.id))
            for key, job_id in session.execute(stmt):
                created.add(key)
                existing[key] = (job_id, JobStatus.PENDING)
        lost_race = [k for k in missing if k not in created]  # inserted by a concurrent submission meanwhile
        existing.update(_existing(session, lost_race))

    retry = [existing[k][0] for k in keys if k not in created and existing[k][1] not in ACTIVE_STATUSES | DONE_STATUSES]
    requeued: set[int] = set()
    for chunk in in_chunks(retry):
        requeued.update(session.scalars(
            update(Job).where(Job.id.in_(chunk), Job.status.in_([JobStatus.FAILED, JobStatus.CANCELLED]))
            .values(status=JobStatus.PENDING, attempts=0, error=None, lease_owner=None, lease_expires_at=None,
                    finished_at=None, updated_at=now).returning(Job.id)).all())
    already_done = sum(1 for k in keys if k not in created and existing[k][1] in DONE_STATUSES)
    already_queued = len(keys) - len(created) - len(requeued) - already_done

    job_ids = [existing[k][0] for k in keys]
    links = [dict(sweep_id=sweep_id, job_id=j, created_at=now) for j in job_ids]
    for i in range(0, len(links), INSERT_CHUNK * 3):
        session.execute(insert(session, SweepJob).values(links[i:i + INSERT_CHUNK * 3]).on_conflict_do_nothing())
    derive_status(session, [sweep_id])
    return AddJobsOutcome(new=len(created) + len(requeued), already_done=already_done,
                          already_queued=already_queued + duplicates, requeued=len(requeued), job_ids=tuple(job_ids))


# --- claiming and leases -----------------------------------------------------------------

def claim_jobs(session: Session, *, owner: str, limit: int, lease_seconds: float, sweep_id: int | None = None) -> list[JobInfo]:
    """Atomically claim up to `limit` pending jobs for `owner` (oldest first; only `sweep_id`'s
    when given): status running, attempts + 1, lease until now + lease_seconds.
    Two claimers never get the same job."""
    if limit <= 0:
        return []
    if not owner:
        raise ValueError("claim_jobs needs a non-empty owner (e.g. 'scheduler@host:pid').")
    until = lease_until(lease_seconds)
    now = utcnow()
    query = select(Job.id).where(Job.status == JobStatus.PENDING)
    if sweep_id is not None:
        query = query.where(Job.id.in_(select(SweepJob.job_id).where(SweepJob.sweep_id == sweep_id)))
    candidates = list(session.scalars(query.order_by(Job.id).limit(limit).with_for_update(skip_locked=True)).all())
    if not candidates:
        return []
    # Conditional on status, whatever the isolation: a row another claimer took is skipped.
    claimed = sorted(session.scalars(
        update(Job).where(Job.id.in_(candidates), Job.status == JobStatus.PENDING)
        .values(status=JobStatus.RUNNING, attempts=Job.attempts + 1, lease_owner=owner, lease_expires_at=until,
                started_at=now, updated_at=now, error=None)
        .returning(Job.id)).all())
    if not claimed:
        return []
    mark_running(session, job_ids=claimed)
    return _job_infos(session, Job.id.in_(claimed))


def renew_leases(session: Session, *, owner: str, job_ids: Sequence[int], lease_seconds: float) -> int:
    """Extend `owner`'s leases on these running jobs; returns how many it still held."""
    until = lease_until(lease_seconds)
    renewed = 0
    for chunk in in_chunks(list(job_ids)):
        renewed += session.execute(
            update(Job).where(Job.id.in_(chunk), Job.status == JobStatus.RUNNING, Job.lease_owner == owner)
            .values(lease_expires_at=until, updated_at=utcnow())).rowcount
    return renewed


def release_expired_leases(session: Session, *, max_attempts: int = 3) -> int:
    """Return running jobs whose lease expired to pending; those that already used
    `max_attempts` attempts become failed instead. Returns how many jobs changed."""
    now = utcnow()
    expired = session.execute(
        select(Job.id, Job.attempts, Job.lease_owner).where(Job.status == JobStatus.RUNNING, Job.lease_expires_at < now)
        .order_by(Job.id).with_for_update(skip_locked=True)).all()
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
    derive_status_of_jobs(session, changed)
    return len(changed)


def release_owner_jobs(session: Session, *, owner: str) -> int:
    """Graceful shutdown: `owner`'s running jobs go back to pending, and the interrupted
    attempt is not counted against them. Returns how many were released."""
    now = utcnow()
    ids = list(session.scalars(
        select(Job.id).where(Job.status == JobStatus.RUNNING, Job.lease_owner == owner).with_for_update()).all())
    released = 0
    for chunk in in_chunks(ids):
        released += session.execute(
            update(Job).where(Job.id.in_(chunk), Job.status == JobStatus.RUNNING, Job.lease_owner == owner)
            .values(status=JobStatus.PENDING, lease_owner=None, lease_expires_at=None, updated_at=now,
                    attempts=case((Job.attempts > 0, Job.attempts - 1), else_=0))).rowcount
    derive_status_of_jobs(session, ids)
    return released


# --- refusals and failures ---------------------------------------------------------------

def write_refusal(*, action: str, job_id: int, status: str | None, lease_owner: str | None,
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


def record_failure(session: Session, *, job_id: int, owner: str | None, error: str, retry: bool,
                   max_attempts: int = 3) -> RecordedFailure:
    """Record a failed attempt: back to pending when `retry` and attempts < max_attempts,
    else failed. Refused (JobStateError, nothing written) for unknown or finished jobs, or (with
    `owner`) one that owner no longer holds."""
    row = session.execute(select(Job.status, Job.lease_owner, Job.attempts).where(Job.id == job_id).with_for_update()).first()
    refusal = write_refusal(action="record a failure", job_id=job_id, status=row.status if row else None,
                            lease_owner=row.lease_owner if row else None, owner=owner)
    if refusal:
        raise JobStateError(refusal)
    assert row is not None
    now = utcnow()
    again = retry and row.attempts < max_attempts
    status = JobStatus.PENDING if again else JobStatus.FAILED
    session.execute(update(Job).where(Job.id == job_id).values(
        status=status, error=error, lease_owner=None, lease_expires_at=None, updated_at=now,
        finished_at=None if again else now))
    finished = () if again else tuple(finish_done(session, job_ids=[job_id]))
    return RecordedFailure(status=str(status), finished_sweeps=finished)
