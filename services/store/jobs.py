"""Jobs: adding a sweep's jobs (reusing finished keys), claiming with leases, failures.

Every state change is a conditional UPDATE (WHERE status=... AND lease_owner=...), so a stale
scheduler can never overwrite what another one did; claiming uses `FOR UPDATE SKIP LOCKED` on
Postgres and the BEGIN IMMEDIATE transaction services.store.db opens on SQLite.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import case, func, select, update
from sqlalchemy.orm import Session

from services.core.status import ACTIVE_STATUSES, DONE_STATUSES, TERMINAL_STATUSES, JobStatus, SweepStatus
from services.store.entities import AddJobsOutcome, JobInfo, PlannedJob, RecordedFailure
from services.store.errors import JobStateError, NotFound
from services.store.models import Checkpoint, Job, Sweep, SweepJob, utcnow
from services.store.sql import in_chunks, insert, lease_until, serialize_membership
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


def _new_rows(session: Session, by_key: dict[str, PlannedJob], missing: Sequence[str]) -> list[tuple[Any, ...]]:
    """(key, checkpoint_id, hyperparameters, seed, spec) of the jobs to create; their checkpoints must be stored."""
    stored = checkpoint_ids(session, [by_key[k].checkpoint for k in missing])
    rows = []
    for k in missing:
        job = by_key[k]
        ckpt = stored.get((job.checkpoint.uri, job.checkpoint.fingerprint))
        if ckpt is None:
            raise ValueError(f"checkpoint {job.checkpoint.uri} is not stored; call upsert_checkpoints before add_jobs.")
        rows.append((k, ckpt.id, job.hyperparameters, int(job.seed), job.spec))
    return rows


class _Added(NamedTuple):
    existing: dict[str, tuple[int, str]]   # every key → (job id, status before this call)
    created: set[str]
    requeued: set[int]


def _add_postgres(session: Session, *, sweep_id: int, by_key: dict[str, PlannedJob], now: datetime) -> _Added:
    """Set-based in SQL: the keys COPYed into a temporary table, joined with jobs for the dedupe,
    the new jobs COPYed and inserted with ON CONFLICT DO NOTHING, requeue and links as one statement each."""
    conn = session.connection().connection.driver_connection
    with conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS llc_submit_keys; "
                    "CREATE TEMP TABLE llc_submit_keys (key varchar(64) PRIMARY KEY) ON COMMIT DROP")
        with cur.copy("COPY llc_submit_keys (key) FROM STDIN") as copy:
            for key in by_key:
                copy.write_row((key,))
        cur.execute("ANALYZE llc_submit_keys")
        cur.execute("SELECT j.key, j.id, j.status FROM llc_submit_keys k JOIN jobs j ON j.key = k.key")
        existing = {key: (job_id, status) for key, job_id, status in cur.fetchall()}
        missing = [k for k in by_key if k not in existing]
        created: set[str] = set()
        if missing:
            cur.execute("DROP TABLE IF EXISTS llc_submit_new; CREATE TEMP TABLE llc_submit_new (key varchar(64), "
                        "checkpoint_id integer, hyperparameters json, seed bigint, spec json) ON COMMIT DROP")
            rows = _new_rows(session, by_key, missing)  # before COPY: the connection is busy until it ends
            with cur.copy("COPY llc_submit_new (key, checkpoint_id, hyperparameters, seed, spec) FROM STDIN") as copy:
                for key, ckpt_id, hyper, seed, spec in rows:
                    copy.write_row((key, ckpt_id, json.dumps(hyper), seed, json.dumps(spec)))
            cur.execute("INSERT INTO jobs (key, checkpoint_id, hyperparameters, seed, spec, status, attempts, created_at, "
                        "updated_at) SELECT key, checkpoint_id, hyperparameters, seed, spec, %s, 0, %s, %s "
                        "FROM llc_submit_new ON CONFLICT (key) DO NOTHING RETURNING key, id",
                        (str(JobStatus.PENDING), now, now))
            for key, job_id in cur.fetchall():
                created.add(key)
                existing[key] = (job_id, JobStatus.PENDING)
            lost_race = [k for k in missing if k not in created]  # inserted by a concurrent submission meanwhile
            existing.update(_existing(session, lost_race))
        cur.execute("UPDATE jobs SET status = %s, attempts = 0, error = NULL, lease_owner = NULL, "
                    "lease_expires_at = NULL, finished_at = NULL, updated_at = %s FROM llc_submit_keys k "
                    "WHERE jobs.key = k.key AND jobs.status IN (%s, %s) RETURNING jobs.id",
                    (str(JobStatus.PENDING), now, str(JobStatus.FAILED), str(JobStatus.CANCELLED)))
        requeued = {row[0] for row in cur.fetchall()}
        cur.execute("INSERT INTO sweep_jobs (sweep_id, job_id, created_at) SELECT %s, j.id, %s "
                    "FROM llc_submit_keys k JOIN jobs j ON j.key = k.key ON CONFLICT DO NOTHING", (sweep_id, now))
    return _Added(existing, created, requeued)


def _add_portable(session: Session, *, sweep_id: int, by_key: dict[str, PlannedJob], now: datetime) -> _Added:
    """The same on SQLite, whose BEGIN IMMEDIATE transaction no other writer interleaves with:
    chunked lookups, executemany inserts (no multi-row VALUES to compile)."""
    keys = list(by_key)
    existing = _existing(session, keys)
    missing = [k for k in keys if k not in existing]
    if missing:
        rows = [dict(key=k, checkpoint_id=c, hyperparameters=h, seed=seed, spec=spec, status=JobStatus.PENDING,
                     attempts=0, created_at=now, updated_at=now)
                for k, c, h, seed, spec in _new_rows(session, by_key, missing)]
        session.execute(insert(session, Job).on_conflict_do_nothing(index_elements=["key"]), rows)
    new = _existing(session, missing)
    created = set(new)
    existing.update({k: (job_id, JobStatus.PENDING) for k, (job_id, _) in new.items()})
    retry = [existing[k][0] for k in keys if existing[k][1] in (JobStatus.FAILED, JobStatus.CANCELLED)]
    requeued: set[int] = set()
    for chunk in in_chunks(retry):
        requeued.update(session.scalars(
            update(Job).where(Job.id.in_(chunk), Job.status.in_([JobStatus.FAILED, JobStatus.CANCELLED]))
            .values(status=JobStatus.PENDING, attempts=0, error=None, lease_owner=None, lease_expires_at=None,
                    finished_at=None, updated_at=now).returning(Job.id)).all())
    links = [dict(sweep_id=sweep_id, job_id=existing[k][0], created_at=now) for k in keys]
    if links:
        session.execute(insert(session, SweepJob).on_conflict_do_nothing(), links)
    return _Added(existing, created, requeued)


def add_jobs(session: Session, *, sweep_id: int, jobs: Sequence[PlannedJob]) -> AddJobsOutcome:
    """Link `jobs` to the sweep, creating the keys not stored yet; a finished key is never re-run.

    Their checkpoints must be stored (upsert_checkpoints). Failed or cancelled keys are put back
    to pending (attempts reset), since the new sweep asks for them again. Set-based: one lookup
    of the keys, a bulk insert of the new jobs and of the links, one UPDATE for the requeued.
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
    add = _add_postgres if session.get_bind().dialect.name == "postgresql" else _add_portable
    added = add(session, sweep_id=sweep_id, by_key=by_key, now=utcnow())
    keys = list(by_key)
    reused = [added.existing[k][1] for k in keys if k not in added.created]
    already_done = sum(1 for st in reused if st in DONE_STATUSES)
    already_queued = len(reused) - already_done - len(added.requeued)
    derive_status(session, [sweep_id])
    return AddJobsOutcome(new=len(added.created) + len(added.requeued), already_done=already_done,
                          already_queued=already_queued + len(jobs) - len(by_key), requeued=len(added.requeued),
                          job_ids=tuple(added.existing[k][0] for k in keys))


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


def release_owner_jobs(session: Session, *, owner: str, job_ids: Sequence[int] | None = None) -> int:
    """Graceful shutdown (or a Ray task cancelled from outside, `job_ids`): `owner`'s running
    jobs go back to pending, and the interrupted attempt is not counted against them. Returns
    how many were released."""
    now = utcnow()
    q = select(Job.id).where(Job.status == JobStatus.RUNNING, Job.lease_owner == owner)
    if job_ids is not None:
        q = q.where(Job.id.in_(list(job_ids)))
    ids = list(session.scalars(q.with_for_update()).all())
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
