"""Store reads the scheduler needs beyond the repository's contract (job → sweeps, statuses of
in-flight jobs, how much work is left)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from services.core.status import ACTIVE_STATUSES, JobStatus, SweepStatus
from services.store.models import Job, Sweep, SweepJob


def sweeps_of(session: Session, job_ids: Sequence[int]) -> dict[int, list[int]]:
    """job id → ids of the sweeps that asked for it (oldest first)."""
    out: dict[int, list[int]] = {j: [] for j in job_ids}
    if job_ids:
        rows = session.execute(select(SweepJob.job_id, SweepJob.sweep_id).where(SweepJob.job_id.in_(list(job_ids)))
                               .order_by(SweepJob.sweep_id))
        for job_id, sweep_id in rows:
            out[job_id].append(sweep_id)
    return out


def holders(session: Session, job_ids: Sequence[int]) -> dict[int, tuple[str, str | None]]:
    """job id → (status, lease owner): whether a job is still ours to run."""
    if not job_ids:
        return {}
    rows = session.execute(select(Job.id, Job.status, Job.lease_owner).where(Job.id.in_(list(job_ids))))
    return {i: (status, owner) for i, status, owner in rows}


def remaining(session: Session, *, sweep_id: int | None) -> int:
    """Pending + running jobs (in one sweep, or of any non-cancelled sweep)."""
    q = select(func.count(func.distinct(Job.id))).select_from(Job).join(SweepJob, SweepJob.job_id == Job.id).where(
        Job.status.in_(list(ACTIVE_STATUSES)))
    if sweep_id is not None:
        q = q.where(SweepJob.sweep_id == sweep_id)
    return int(session.scalar(q) or 0)


def sweep_resources(session: Session, *, sweep_id: int) -> dict[str, Any]:
    """The per-job resources the sweep's config asks for."""
    config = session.scalar(select(Sweep.config).where(Sweep.id == sweep_id)) or {}
    return dict(((config.get("sweep") or {}).get("resources")) or {})


def finished_sweeps(session: Session, sweep_ids: Sequence[int]) -> list[int]:
    """Those of `sweep_ids` the store now marks finished (it derives sweep status on every write)."""
    if not sweep_ids:
        return []
    return list(session.scalars(select(Sweep.id).where(Sweep.id.in_(list(sweep_ids)), Sweep.status == SweepStatus.FINISHED)
                                .order_by(Sweep.id)).all())


def note_jobs(session: Session, *, owner: str, notes: dict[int, str | None]) -> None:
    """Set (or clear, None) why this owner's running jobs are stuck; `llc status` shows the note."""
    for note in set(notes.values()):
        ids = [i for i, n in notes.items() if n == note]
        session.execute(update(Job).where(Job.id.in_(ids), Job.lease_owner == owner, Job.status == JobStatus.RUNNING)
                        .values(error=note))
