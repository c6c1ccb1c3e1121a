"""Submission: config → discovered checkpoints → jobs in the store, reusing finished job keys.

Everything that can be wrong (config, run prefix, selection, spec) is checked before the
first write, and the writes happen in one transaction, so a refused submission stores nothing.
"""
from __future__ import annotations

import getpass
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from services.core.errors import UserError
from services.store import jobs as store_jobs
from services.store import sweeps as store_sweeps
from services.store.db import ensure_schema, session_scope
from services.sweeps.config import to_dict
from services.core.endpoints import Endpoints, resolve_endpoints
from services.store.entities import PlannedJob
from services.sweeps.expand import components_need_config, expand_sweep
from services.sweeps.schema import LLCConfig
from services.sweeps.selection import describe, select_checkpoints
from services.sweeps.validate import read_model_config, validate_sweep


class SubmitError(UserError):
    """The sweep cannot be submitted (nothing was written)."""


@dataclass(frozen=True)
class SweepPlan:
    run_uri: str
    endpoints: Endpoints
    config: dict
    checkpoints: list
    jobs: list[PlannedJob]
    skipped: list[str] = field(default_factory=list)   # incomplete checkpoint folders, with reasons


@dataclass(frozen=True)
class SubmitOutcome:
    sweep_id: int
    name: str
    run_uri: str
    checkpoints: int
    jobs: int
    new: int
    already_done: int
    already_queued: int
    skipped: tuple[str, ...] = ()

    def summary(self) -> str:
        return (f"sweep {self.sweep_id} ({self.name}): {self.jobs} jobs over {self.checkpoints} checkpoints of "
                f"{self.run_uri}: {self.new} new, {self.already_done} already done, {self.already_queued} already queued")


def plan_sweep(cfg: LLCConfig) -> SweepPlan:
    """Discover and select checkpoints, check the sweep can run, expand the grid; reads the object
    store, writes nothing."""
    from workers.checkpoints import CheckpointError, discover_checkpoints
    from workers.llc import ESTIMATOR_VERSION

    ends = resolve_endpoints(cfg)
    run_uri = ends.under_storage(cfg.sweep.run)
    skipped: list[str] = []
    try:
        refs = discover_checkpoints(run_uri, on_skip=skipped.append)
    except (CheckpointError, ValueError) as exc:
        raise SubmitError(f"{str(exc).rstrip('.')} (sweep.run={cfg.sweep.run}, selection: "
                          f"{describe(cfg.sweep.checkpoints)}); nothing was submitted.") from exc
    chosen = select_checkpoints(refs, cfg.sweep.checkpoints, run_uri=run_uri)
    dataset_uri = ends.under_storage(cfg.sweep.dataset.uri)
    fingerprint = validate_sweep(cfg, dataset_uri=dataset_uri, checkpoints=chosen)
    model_config = _model_config(chosen) if components_need_config(cfg.sweep.components) else None
    try:
        jobs = expand_sweep(cfg, chosen, storage_uri=ends.storage_uri, estimator_version=ESTIMATOR_VERSION,
                            model_config=model_config, dataset_fingerprint=fingerprint)
    except ValueError as exc:
        raise SubmitError(f"{str(exc).rstrip('.')}; nothing was submitted.") from exc
    return SweepPlan(run_uri=run_uri, endpoints=ends, config=to_dict(cfg), checkpoints=chosen, jobs=jobs,
                     skipped=skipped)


def _model_config(checkpoints: list) -> dict | None:
    """config.json of the run's first selected checkpoint (a run keeps its architecture)."""
    return read_model_config(checkpoints[0].uri) if checkpoints else None


def submit_sweep(cfg: LLCConfig, *, submitted_by: str | None = None, database_url: str | None = None) -> SubmitOutcome:
    """Write the sweep and its jobs (one transaction); finished keys are reused, not re-run."""
    plan = plan_sweep(cfg)
    return submit_plan(plan, name=cfg.sweep.name, submitted_by=submitted_by,
                       database_url=database_url or plan.endpoints.database_url)


def submit_plan(plan: SweepPlan, *, name: str, submitted_by: str | None, database_url: str) -> SubmitOutcome:
    ensure_schema(database_url)
    who = submitted_by or _user()
    with session_scope(database_url) as s:
        run_id = store_sweeps.upsert_training_run(s, uri=plan.run_uri)
        sweep = store_sweeps.create_sweep(s, name=name, config=plan.config, submitted_by=who, training_run_id=run_id)
        outcome = link_jobs(s, sweep_id=sweep.id, run_id=run_id, checkpoints=plan.checkpoints, jobs=plan.jobs)
        sweep_id = sweep.id
    return SubmitOutcome(sweep_id=sweep_id, name=name, run_uri=plan.run_uri, checkpoints=len(plan.checkpoints),
                         jobs=len(plan.jobs), new=outcome.new, already_done=outcome.already_done,
                         already_queued=outcome.already_queued, skipped=tuple(plan.skipped))


def link_jobs(s: Any, *, sweep_id: int, run_id: int, checkpoints: Sequence[Any], jobs: Sequence[PlannedJob]
              ) -> Any:
    """Store the checkpoints and link the planned jobs to the sweep (finished keys reused)."""
    store_sweeps.upsert_checkpoints(s, training_run_id=run_id, checkpoints=checkpoints)
    return store_jobs.add_jobs(s, sweep_id=sweep_id, jobs=jobs)


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
