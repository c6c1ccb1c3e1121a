"""An adaptive sweep on real parts: nightly submits the first pass, the scheduler (local Ray
workers, moto S3, Postgres) adds checkpoints when its jobs are done, and aggregates once at the end."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from services.nightly import run_nightly_once
from services.scheduler.loop import Scheduler, SchedulerOptions
from services.store.db import session_scope
from services.store.results import sweep_results
from services.store.sweeps import get_sweep
from tests.services.sweeps.tiny_runs import TINY, tiny_run

pytestmark = pytest.mark.slow

ADAPTIVE = TINY.__class__(**{**TINY.__dict__, "steps": 300, "num_checkpoints": 10, "lr": 1e-2})


def test_nightly_first_pass_then_the_scheduler_refines_and_aggregates_once(s3_endpoint: str, db: str,
                                                                           ray_cluster: str) -> None:
    storage, _ = tiny_run(s3_endpoint, settings=ADAPTIVE)
    overrides = ["storage=s3", f"storage.uri={storage}", "schedule.sweeps=[small]", "sweep.dataset.max_sequences=32",
                 "sampler.epsilon=[3e-4]", "sampler.num_chains=[2]", "sampler.num_draws=[20]", "sampler.num_burnin=[0]",
                 "sampler.batch_size=[8]", "sweep.checkpoints.every=1",
                 "sweep.checkpoints.adaptive={initial: 2, budget: 2, per_round: 1}"]
    (sub,) = run_nightly_once(overrides, now=datetime(2026, 1, 2, 2, tzinfo=timezone.utc))
    assert (sub.checkpoints, sub.new) == (2, 2)          # the first pass: the run's two ends
    opts = SchedulerOptions(database_url=db, sweep_id=sub.sweep_id, until_idle=True, max_in_flight=2,
                            lease_seconds=30, poll_seconds=0.2)
    report = Scheduler(opts, tracker=None, aggregate=True).run()
    with session_scope(db) as s:
        rows = sweep_results(s, sweep_id=sub.sweep_id)
        status = get_sweep(s, sweep_id=sub.sweep_id).status
    steps = sorted({r.step for r in rows})
    # λ̂ moves far more than its noise between an untrained and a trained model: the gap gets filled.
    assert 3 <= len(steps) <= 4 and steps[0] == 0 and steps[-1] == ADAPTIVE.steps, steps
    assert report.succeeded == len(rows) and all(r.status == "succeeded" for r in rows)
    assert status == "finished"
    assert report.finished_sweeps == report.aggregated_sweeps == [sub.sweep_id]
