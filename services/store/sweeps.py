"""Training runs, checkpoints and sweeps: creating them, reading them, deriving sweep status.

A sweep's status follows its jobs: submitted until one of them starts, running while any is
pending or running, finished when none is; cancelled is final. Callers commit (`session_scope`).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import exists, func, select, update
from sqlalchemy.orm import Session

from services.core.status import ACTIVE_STATUSES, ACTIVE_SWEEP_STATUSES, JobStatus, SubmitterKind, SweepStatus
from services.store.entities import CheckpointInfo, CheckpointLike, SweepInfo
from services.store.errors import NotFound
from services.store.models import Checkpoint, Job, Sweep, SweepJob, TrainingRun, utcnow
from services.store.sql import INSERT_CHUNK, in_chunks, insert, serialize_membership

NO_SWEEP = "there is no sweep with id {}; run `llc status` to list the sweeps."


def _sweep_info(sweep: Sweep, run_uri: str | None) -> SweepInfo:
    return SweepInfo(id=sweep.id, name=sweep.name, config=dict(sweep.config or {}), submitted_by=sweep.submitted_by,
                     submitter_kind=sweep.submitter_kind, training_run_uri=run_uri, status=sweep.status,
                     mlflow_run_id=sweep.mlflow_run_id, created_at=sweep.created_at, updated_at=sweep.updated_at,
                     finished_at=sweep.finished_at)


# --- training runs and checkpoints ------------------------------------------------------

def upsert_training_run(session: Session, *, uri: str) -> int:
    """The id of the training run at `uri`, created on first sight (concurrency-safe)."""
    session.execute(insert(session, TrainingRun).values(uri=uri, created_at=utcnow()).on_conflict_do_nothing())
    return int(session.scalars(select(TrainingRun.id).where(TrainingRun.uri == uri)).one())


def upsert_checkpoints(session: Session, *, training_run_id: int,
                       checkpoints: Sequence[CheckpointLike]) -> dict[tuple[str, str], CheckpointInfo]:
    """(uri, fingerprint) → stored row for each checkpoint, created when new (bulk, concurrency-safe);
    a rewritten checkpoint (new fingerprint) gets a new row."""
    for ref in checkpoints:
        if not ref.fingerprint:
            raise ValueError(f"checkpoint {ref.uri} has an empty fingerprint; compute its content hash (ETag) first.")
    now = utcnow()
    rows = [dict(training_run_id=training_run_id, step=int(r.step), uri=r.uri, fingerprint=r.fingerprint, created_at=now)
            for r in checkpoints]
    for i in range(0, len(rows), INSERT_CHUNK):
        session.execute(insert(session, Checkpoint).values(rows[i:i + INSERT_CHUNK]).on_conflict_do_nothing())
    found = checkpoint_ids(session, checkpoints)
    for ref in checkpoints:
        got = found[(ref.uri, ref.fingerprint)]
        if got.training_run_id != training_run_id or got.step != int(ref.step):
            raise ValueError(
                f"checkpoint {ref.uri} is already stored as step {got.step} of training run id {got.training_run_id}, "
                f"not step {ref.step} of training run id {training_run_id}; check the run prefix and step naming.")
    return found


def upsert_checkpoint(session: Session, *, training_run_id: int, step: int, uri: str, fingerprint: str) -> CheckpointInfo:
    """One checkpoint's row (see upsert_checkpoints)."""
    ref = CheckpointInfo(id=0, training_run_id=training_run_id, step=step, uri=uri, fingerprint=fingerprint)
    return upsert_checkpoints(session, training_run_id=training_run_id, checkpoints=[ref])[(uri, fingerprint)]


def checkpoint_ids(session: Session, checkpoints: Sequence[CheckpointLike]) -> dict[tuple[str, str], CheckpointInfo]:
    """The stored rows of these checkpoints, by (uri, fingerprint); missing ones are left out."""
    uris = sorted({c.uri for c in checkpoints})
    wanted = {(c.uri, c.fingerprint) for c in checkpoints}
    out: dict[tuple[str, str], CheckpointInfo] = {}
    for chunk in in_chunks(uris):
        for row in session.execute(select(Checkpoint.id, Checkpoint.training_run_id, Checkpoint.step, Checkpoint.uri,
                                          Checkpoint.fingerprint).where(Checkpoint.uri.in_(chunk))):
            if (row.uri, row.fingerprint) in wanted:
                out[(row.uri, row.fingerprint)] = CheckpointInfo(id=row.id, training_run_id=row.training_run_id,
                                                                 step=int(row.step), uri=row.uri,
                                                                 fingerprint=row.fingerprint)
    return out


# --- sweeps -------------------------------------------------------------------------------

def create_sweep(session: Session, *, name: str, config: dict[str, Any], submitted_by: str,
                 training_run_id: int | None, submitter_kind: str | None = None) -> SweepInfo:
    """A new sweep (status submitted). `submitter_kind` is person/schedule; default: 'schedule'
    when `submitted_by` starts with 'schedule', else 'person'."""
    kind = submitter_kind or (SubmitterKind.SCHEDULE if submitted_by.startswith("schedule") else SubmitterKind.PERSON)
    if kind not in set(SubmitterKind):
        raise ValueError(f"submitter_kind {kind!r} is not one of {', '.join(SubmitterKind)}.")
    now = utcnow()
    sweep = Sweep(name=name, config=config, submitted_by=submitted_by, submitter_kind=str(kind),
                  training_run_id=training_run_id, status=SweepStatus.SUBMITTED, created_at=now, updated_at=now)
    session.add(sweep)
    session.flush()
    return get_sweep(session, sweep_id=sweep.id)


def _sweeps_query() -> Any:
    return select(Sweep, TrainingRun.uri).outerjoin(TrainingRun, TrainingRun.id == Sweep.training_run_id)


def get_sweep(session: Session, *, sweep_id: int) -> SweepInfo:
    """The sweep with this id; NotFound (a LookupError) naming the id otherwise."""
    row = session.execute(_sweeps_query().where(Sweep.id == sweep_id).execution_options(populate_existing=True)).first()
    if row is None:
        raise NotFound(NO_SWEEP.format(sweep_id))
    return _sweep_info(*row)


def list_sweeps(session: Session, *, name: str | None = None) -> list[SweepInfo]:
    """Every sweep (or those named `name`), oldest first."""
    query = _sweeps_query().order_by(Sweep.id).execution_options(populate_existing=True)
    if name is not None:
        query = query.where(Sweep.name == name)
    return [_sweep_info(*row) for row in session.execute(query)]


def find_sweep(session: Session, ref: int | str) -> SweepInfo:
    """A sweep by id (an int or a string of digits) or by name (the newest sweep of that name)."""
    if isinstance(ref, int) or str(ref).isdigit():
        return get_sweep(session, sweep_id=int(ref))
    matches = list_sweeps(session, name=str(ref))
    if not matches:
        raise NotFound(f"there is no sweep named {ref!r}; run `llc status` to list the sweeps, or give its id.")
    return max(matches, key=lambda sw: (sw.created_at, sw.id))


def set_sweep_mlflow_run(session: Session, *, sweep_id: int, run_id: str) -> None:
    if session.execute(update(Sweep).where(Sweep.id == sweep_id).values(mlflow_run_id=run_id, updated_at=utcnow())).rowcount != 1:
        raise NotFound(NO_SWEEP.format(sweep_id))


def sweep_resources(session: Session, *, sweep_id: int) -> dict[str, Any]:
    """The per-job resources the sweep's config asks for."""
    config = session.scalar(select(Sweep.config).where(Sweep.id == sweep_id)) or {}
    return dict(((config.get("sweep") or {}).get("resources")) or {})


# --- counts and status -------------------------------------------------------------------

def _zero_counts() -> dict[str, int]:
    return {str(s): 0 for s in JobStatus}


def sweep_counts(session: Session, *, sweep_id: int) -> dict[str, int]:
    """Job status → number of this sweep's jobs in it (every status present, zeros included)."""
    return all_sweep_counts(session, sweep_ids=[sweep_id])[sweep_id]


def all_sweep_counts(session: Session, *, sweep_ids: Sequence[int] | None = None) -> dict[int, dict[str, int]]:
    """Counts by job status for each sweep (every sweep when `sweep_ids` is None), in one query."""
    query = (select(SweepJob.sweep_id, Job.status, func.count()).join(Job, Job.id == SweepJob.job_id)
             .group_by(SweepJob.sweep_id, Job.status))
    if sweep_ids is not None:
        query = query.where(SweepJob.sweep_id.in_(list(sweep_ids)))
    out: dict[int, dict[str, int]] = {sid: _zero_counts() for sid in (sweep_ids or ())}
    for sweep_id, status, n in session.execute(query):
        out.setdefault(sweep_id, _zero_counts())[status] = int(n)
    return out


def sweep_is_finished(session: Session, *, sweep_id: int) -> bool:
    """True when the sweep was cancelled or none of its jobs is pending or running."""
    if get_sweep(session, sweep_id=sweep_id).status == SweepStatus.CANCELLED:
        return True
    return not session.scalar(select(_active_job_of(sweep_id)))


def _active_job_of(sweep: Any) -> Any:
    """EXISTS (an active job of `sweep`, an id or a correlated column): stops at the first one found."""
    return exists().where(SweepJob.sweep_id == sweep, Job.id == SweepJob.job_id, Job.status.in_(list(ACTIVE_STATUSES)))


def sweeps_of_jobs(session: Session, job_ids: Sequence[int]) -> dict[int, list[int]]:
    """job id → ids of the sweeps that asked for it (oldest first)."""
    out: dict[int, list[int]] = {j: [] for j in job_ids}
    for chunk in in_chunks(list(job_ids)):
        rows = session.execute(select(SweepJob.job_id, SweepJob.sweep_id).where(SweepJob.job_id.in_(chunk))
                               .order_by(SweepJob.sweep_id))
        for job_id, sweep_id in rows:
            out[job_id].append(sweep_id)
    return out


def _distinct_sweeps(session: Session, job_ids: Sequence[int]) -> list[int]:
    return sorted({s for ids in sweeps_of_jobs(session, job_ids).values() for s in ids})


def _sweeps_of(job_ids: Sequence[int]) -> Any:
    """SELECT the ids of the sweeps that asked for these jobs (a subquery: no round trip of its own)."""
    return select(SweepJob.sweep_id).where(SweepJob.job_id.in_(list(job_ids)))


def mark_running(session: Session, *, job_ids: Sequence[int]) -> None:
    """Jobs of these ids started: their submitted sweeps are running now (one UPDATE, no counting)."""
    if job_ids:
        session.execute(update(Sweep).where(Sweep.id.in_(_sweeps_of(job_ids)), Sweep.status == SweepStatus.SUBMITTED)
                        .values(status=SweepStatus.RUNNING, updated_at=utcnow()))


def finish_done(session: Session, *, job_ids: Sequence[int]) -> list[int]:
    """Jobs of these ids reached a final state: finish each of their sweeps that has no active job
    left, and return those sweeps' ids. One UPDATE; the EXISTS stops at the first active job."""
    if not job_ids:
        return []
    now = utcnow()
    stmt = (update(Sweep)
            .where(Sweep.id.in_(_sweeps_of(job_ids)), Sweep.status.in_(list(ACTIVE_SWEEP_STATUSES)),
                   ~_active_job_of(Sweep.id))
            .values(status=SweepStatus.FINISHED, finished_at=now, updated_at=now)
            .returning(Sweep.id))
    return sorted(session.scalars(stmt).all())


def derive_status(session: Session, sweep_ids: Iterable[int]) -> None:
    """Derive each non-cancelled sweep's status from its job counts (after submission or requeues)."""
    ids = sorted(set(sweep_ids))
    if not ids:
        return
    now = utcnow()
    current = dict(session.execute(select(Sweep.id, Sweep.status).where(Sweep.id.in_(ids))).all())
    for sweep_id, counts in all_sweep_counts(session, sweep_ids=ids).items():
        if current.get(sweep_id) in (None, SweepStatus.CANCELLED):
            continue
        active = sum(counts[s] for s in ACTIVE_STATUSES)
        if active == 0:
            status = SweepStatus.FINISHED
        elif active < sum(counts.values()) or counts[JobStatus.RUNNING]:
            status = SweepStatus.RUNNING
        else:
            status = SweepStatus.SUBMITTED
        if status != current[sweep_id]:
            session.execute(update(Sweep).where(Sweep.id == sweep_id, Sweep.status != SweepStatus.CANCELLED).values(
                status=status, updated_at=now, finished_at=now if status == SweepStatus.FINISHED else None))


def derive_status_of_jobs(session: Session, job_ids: Sequence[int]) -> None:
    derive_status(session, _distinct_sweeps(session, job_ids))


def cancel_sweep(session: Session, *, sweep_id: int) -> list[int]:
    """Cancel the sweep and those of its pending/running jobs no other active sweep needs.

    Returns the ids of the jobs cancelled (running ones included, so the scheduler can cancel
    their Ray tasks); results a cancelled running job later reports are refused.
    """
    serialize_membership(session)
    sweep = get_sweep(session, sweep_id=sweep_id)
    now = utcnow()
    session.execute(update(Sweep).where(Sweep.id == sweep.id).values(status=SweepStatus.CANCELLED, updated_at=now,
                                                                     finished_at=now))
    other_active = (select(SweepJob.job_id).join(Sweep, Sweep.id == SweepJob.sweep_id)
                    .where(SweepJob.sweep_id != sweep.id, Sweep.status.in_(list(ACTIVE_SWEEP_STATUSES))))
    candidates = select(SweepJob.job_id).where(SweepJob.sweep_id == sweep.id)
    ids = list(session.scalars(
        select(Job.id).where(Job.id.in_(candidates), Job.status.in_(list(ACTIVE_STATUSES)), Job.id.not_in(other_active))
        .order_by(Job.id).with_for_update()).all())
    cancelled: list[int] = []
    for chunk in in_chunks(ids):
        cancelled.extend(session.scalars(
            update(Job).where(Job.id.in_(chunk), Job.status.in_(list(ACTIVE_STATUSES)))
            .values(status=JobStatus.CANCELLED, lease_owner=None, lease_expires_at=None, finished_at=now, updated_at=now,
                    error=f"cancelled with sweep {sweep.id}")
            .returning(Job.id)).all())
    return sorted(cancelled)
