"""The results store: models, engine/session helpers, schema revisions, repository, job keys."""
from __future__ import annotations

from services.store.db import check_schema, downgrade, ensure_schema, get_engine, session_scope, upgrade
from services.store.errors import JobStateError, NotFound, SchemaOutOfDate, StoreError, StoreUnavailable
from services.store.jobkey import job_key
from services.core.status import JobStatus, SweepStatus
from services.store.models import Checkpoint, Job, Result, Stage, Sweep, TrainingRun
from services.store.repository import AddJobsOutcome, NewJob, ResultRow, StageRow

__all__ = [
    "AddJobsOutcome", "Checkpoint", "Job", "JobStateError", "JobStatus", "NewJob", "NotFound", "Result", "ResultRow",
    "SchemaOutOfDate", "Stage", "StageRow", "StoreError", "StoreUnavailable", "Sweep", "SweepStatus", "TrainingRun",
    "check_schema", "downgrade", "ensure_schema", "get_engine", "job_key", "session_scope", "upgrade",
]
