"""The results store, split by concern: sweeps (runs, checkpoints, sweeps, status), jobs (adding,
claiming, leases, failures), results (the one JobResult ↔ row mapping and write path), stages.
Reads return the frozen dataclasses of `entities`; engines, sessions and schema live in `db`."""
from __future__ import annotations

from services.store.db import check_schema, downgrade, ensure_schema, get_engine, session_scope, upgrade
from services.store.entities import (
    AddJobsOutcome,
    CheckpointInfo,
    JobInfo,
    NewResult,
    PlannedJob,
    RecordedFailure,
    RecordedResults,
    ResultRow,
    StageInfo,
    StageRow,
    SweepInfo,
)
from services.store.errors import JobStateError, NotFound, SchemaOutOfDate, StoreError, StoreUnavailable
from services.store.jobkey import job_key

__all__ = [
    "AddJobsOutcome", "CheckpointInfo", "JobInfo", "JobStateError", "NewResult", "NotFound", "PlannedJob",
    "RecordedFailure", "RecordedResults", "ResultRow", "SchemaOutOfDate", "StageInfo", "StageRow", "StoreError",
    "StoreUnavailable", "SweepInfo", "check_schema", "downgrade", "ensure_schema", "get_engine", "job_key",
    "session_scope", "upgrade",
]
