"""Results: the one JobResult ↔ row mapping, the one write path, and a sweep's results.

A result is written once and never overwritten; writing it marks its job succeeded (or
diverged: a final result, not a retry) in the same transaction.
"""
from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from sqlalchemy import distinct, func, select, update
from sqlalchemy.orm import Session

from services.core.numbers import finite_or_none, json_safe
from services.core.status import JobStatus
from services.store.entities import NewResult, RecordedResults, ResultRow
from services.store.jobs import write_refusal
from services.store.models import Checkpoint, Job, Result, SweepJob, utcnow
from services.store.sql import in_chunks
from services.store.sweeps import finish_done, get_sweep

#: arrays longer than this (per-draw traces) stay out of Result.payload; MLflow keeps them
PAYLOAD_MAX_ARRAY = 256
_FLOATS = ("llc_mean", "llc_std", "init_loss", "loss_wstar", "baseline_loss", "nbeta", "wall_time_s")
_INTS = ("n", "num_chains", "num_draws")


def _leaves(value: Any) -> int:
    return sum(_leaves(v) for v in value) if isinstance(value, list) else 1


def _payload(result: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in result.items():
        safe = json_safe(value)
        if isinstance(safe, list) and _leaves(safe) > PAYLOAD_MAX_ARRAY:
            safe = {"omitted": f"{_leaves(safe)} values (traces are logged to MLflow)"}
        out[str(key)] = safe
    return out


def result_columns(result: Mapping[str, Any], *, diverged: bool) -> dict[str, Any]:
    """The results row of a JobResult (its `to_dict()`): the one place the mapping lives.
    Non-finite numbers are stored as null; the whole dict, long arrays left out, as payload."""
    values: dict[str, Any] = {k: finite_or_none(result.get(k)) for k in _FLOATS}
    values.update({k: int(result[k]) if result.get(k) is not None else None for k in _INTS})
    per_chain = result.get("llc_per_chain")
    values["llc_per_chain"] = json_safe(per_chain) if per_chain is not None else None
    diagnostics = result.get("diagnostics")
    values["diagnostics"] = json_safe(diagnostics) if diagnostics is not None else None
    values["device"] = str(result["device"]) if result.get("device") is not None else None
    values["diverged"] = bool(diverged)
    values["payload"] = _payload(result)
    return values


_JOB_FIELDS = (Job.id, Job.key, Checkpoint.step, Checkpoint.uri, Job.hyperparameters, Job.seed, Job.status, Job.error,
               Job.mlflow_run_id, Job.worker_host)
_RESULT_FIELDS = tuple(getattr(Result, k) for k in (*_FLOATS, *_INTS, "llc_per_chain", "diverged", "diagnostics", "device"))


def _row(values: Sequence[Any]) -> ResultRow:
    """A sweep's job with its result (result fields None until it has one), from one row of columns."""
    (job_id, key, step, uri, hyper, seed, status, error, run_id, host), res = values[:10], values[10:]
    base = dict(job_id=job_id, key=key, step=int(step), checkpoint_uri=uri, hyperparameters=dict(hyper), seed=int(seed),
                status=str(status), error=error, mlflow_run_id=run_id, worker_host=host)
    if res[-3] is None:  # no result row (diverged is NOT NULL on stored results)
        return ResultRow(**base)
    names = (*_FLOATS, *_INTS, "llc_per_chain", "diverged", "diagnostics", "device")
    return ResultRow(**base, **dict(zip(names, res, strict=True)))


def record_results(session: Session, *, owner: str | None, results: Sequence[NewResult]) -> RecordedResults:
    """Store a batch of results in the caller's transaction: one locking SELECT, one multi-row
    INSERT, one executemany UPDATE of the jobs, one finishing UPDATE of their sweeps.

    Per job, without raising: an unknown, finished (succeeded, diverged, failed) or cancelled
    job, or (with `owner`) one that owner no longer holds, is refused and nothing is written for
    it; a job given twice is stored once, the second is refused. The others are stored.
    """
    if not results:
        return RecordedResults()
    ids = sorted({r.job_id for r in results})
    current: dict[int, tuple[str, str | None, str | None, str | None]] = {}
    for chunk in in_chunks(ids):
        rows = session.execute(select(Job.id, Job.status, Job.lease_owner, Job.worker_host, Job.mlflow_run_id)
                               .where(Job.id.in_(chunk)).order_by(Job.id).with_for_update())
        for job_id, status, lease_owner, host, run_id in rows:
            current[job_id] = (status, lease_owner, host, run_id)
    now = utcnow()
    result_rows: list[dict[str, Any]] = []
    job_rows: list[dict[str, Any]] = []
    stored: list[int] = []
    refused: dict[int, str] = {}
    for r in results:
        status, lease_owner, host, run_id = current.get(r.job_id, (None, None, None, None))
        refusal = write_refusal(action="record a result", job_id=r.job_id, status=status, lease_owner=lease_owner,
                                owner=owner, given_twice=r.job_id in stored)
        if refusal:
            refused[r.job_id] = refusal
            continue
        stored.append(r.job_id)
        result_rows.append(dict(result_columns(r.result, diverged=r.diverged), job_id=r.job_id, created_at=now))
        new_host = r.result.get("host")
        job_rows.append(dict(id=r.job_id, status=JobStatus.DIVERGED if r.diverged else JobStatus.SUCCEEDED,
                             lease_owner=None, lease_expires_at=None, finished_at=now, updated_at=now, error=None,
                             worker_host=str(new_host) if new_host else host, mlflow_run_id=r.mlflow_run_id or run_id))
    if not stored:
        return RecordedResults(refused=refused)
    session.execute(Result.__table__.insert(), result_rows)
    session.execute(update(Job), job_rows)  # ORM bulk UPDATE by primary key: one executemany
    return RecordedResults(stored=tuple(stored), refused=refused,
                           finished_sweeps=tuple(finish_done(session, job_ids=stored)))


def sweep_results(session: Session, *, sweep_id: int, steps: Collection[int] | None = None,
                  statuses: Collection[str] | None = None, limit: int | None = None) -> list[ResultRow]:
    """Every job of the sweep (any status) with its result, ordered by step, then job id;
    `steps`, `statuses` and `limit` narrow it in SQL (`llc status` on a 100k-job sweep)."""
    get_sweep(session, sweep_id=sweep_id)
    query = (select(*_JOB_FIELDS, *_RESULT_FIELDS)
             .join(SweepJob, SweepJob.job_id == Job.id)
             .join(Checkpoint, Checkpoint.id == Job.checkpoint_id)
             .outerjoin(Result, Result.job_id == Job.id)
             .where(SweepJob.sweep_id == sweep_id))
    if steps is not None:
        query = query.where(Checkpoint.step.in_(sorted(steps)))
    if statuses is not None:
        query = query.where(Job.status.in_(sorted(statuses)))
    query = query.order_by(Checkpoint.step, Job.id)
    if limit is not None:
        query = query.limit(limit)
    return [_row(r) for r in session.execute(query)]


def latest_result_steps(session: Session, *, sweep_id: int, count: int) -> list[int]:
    """The `count` latest checkpoint steps at which the sweep has a stored result, ascending."""
    rows = session.execute(
        select(Checkpoint.step).distinct()
        .join(Job, Job.checkpoint_id == Checkpoint.id)
        .join(SweepJob, SweepJob.job_id == Job.id)
        .join(Result, Result.job_id == Job.id)
        .where(SweepJob.sweep_id == sweep_id)
        .order_by(Checkpoint.step.desc()).limit(count))
    return sorted(int(step) for (step,) in rows)


def result_step_count(session: Session, *, sweep_id: int) -> int:
    """How many checkpoint steps of the sweep have at least one stored result."""
    return int(session.execute(
        select(func.count(distinct(Checkpoint.step)))
        .join(Job, Job.checkpoint_id == Checkpoint.id)
        .join(SweepJob, SweepJob.job_id == Job.id)
        .join(Result, Result.job_id == Job.id)
        .where(SweepJob.sweep_id == sweep_id)).scalar_one())


def waiting_notes(session: Session, *, sweep_id: int, statuses: Collection[str], limit: int = 5) -> list[str]:
    """Distinct notes (requeue reasons, "no node can run it") on the sweep's jobs in `statuses`."""
    rows = session.execute(
        select(Job.error).distinct()
        .join(SweepJob, SweepJob.job_id == Job.id)
        .where(SweepJob.sweep_id == sweep_id, Job.status.in_(sorted(statuses)), Job.error.is_not(None))
        .order_by(Job.error).limit(limit))
    return [str(e) for (e,) in rows]
