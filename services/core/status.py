"""The job and sweep states, one vocabulary for the store, scheduler, views and API."""
from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    DIVERGED = "diverged"
    FAILED = "failed"
    CANCELLED = "cancelled"


#: Terminal job states; `DONE_STATUSES` are the ones whose result is reused, never recomputed.
TERMINAL_STATUSES: frozenset[JobStatus] = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.DIVERGED})
DONE_STATUSES: frozenset[JobStatus] = frozenset({JobStatus.SUCCEEDED, JobStatus.DIVERGED})
ACTIVE_STATUSES: frozenset[JobStatus] = frozenset({JobStatus.PENDING, JobStatus.RUNNING})
#: display order of job states (tables, API columns)
JOB_STATES: tuple[JobStatus, ...] = tuple(JobStatus)


class SweepStatus(StrEnum):
    SUBMITTED = "submitted"
    RUNNING = "running"
    FINISHED = "finished"
    CANCELLED = "cancelled"


ACTIVE_SWEEP_STATUSES: frozenset[SweepStatus] = frozenset({SweepStatus.SUBMITTED, SweepStatus.RUNNING})


class SubmitterKind(StrEnum):
    PERSON = "person"
    SCHEDULE = "schedule"
