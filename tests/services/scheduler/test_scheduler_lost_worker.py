"""A Ray worker killed mid-job (SIGKILL, as the OOM killer or a lost node would) is retried:
an infrastructure fault, run again by the scheduler after a backoff without charging an
attempt, and the result lands exactly once.

No race with the job finishing first: on its first attempt the job's own worker process
writes its PID to a marker file and SIGKILLs itself; the second attempt (marker present)
runs the real job body."""
from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
import ray
from sqlalchemy import func, select

from services.scheduler.loop import Scheduler, SchedulerOptions
from services.store.db import session_scope
from services.store.models import Job, Result
from services.sweeps.config import load_config
from services.sweeps.submit import submit_sweep

pytestmark = pytest.mark.slow


def _dies_on_first_attempt(marker: Path) -> Any:
    """The real Ray task, except that its first attempt kills its own worker (defined here so Ray
    pickles it by value)."""

    def run(spec: Any, attempt: str | None = None) -> dict[str, Any]:
        from services.scheduler.task import execute_job

        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return execute_job(spec, attempt)
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)
        raise AssertionError("unreachable: the worker was killed")

    return ray.remote(run)


def test_a_killed_worker_is_requeued_and_its_job_lands_once(storage: str, db: str, ray_cluster: str,
                                                             tmp_path: Path) -> None:
    overrides = ["sweep=small", "storage=s3", f"storage.uri={storage}", "sweep.run=demo-run",
                 "sweep.dataset.uri=demo-run/dataset", "sweep.dataset.max_sequences=32", "sweep.checkpoints.steps=[6]",
                 "sampler.epsilon=[1e-4]", "sampler.num_chains=[2]", "sampler.num_draws=[30]",
                 "sampler.num_burnin=[0]", "sampler.batch_size=[8]"]
    sub = submit_sweep(load_config(overrides), submitted_by="tester")
    assert sub.new == 1
    marker = tmp_path / "first-attempt.pid"
    # No Ray-level retry: the scheduler's own infrastructure retry is what this test watches.
    opts = SchedulerOptions(database_url=db, sweep_id=sub.sweep_id, until_idle=True, max_in_flight=1,
                            lease_seconds=30, poll_seconds=0.2, ray_max_retries=0, max_attempts=3,
                            infra_backoff_s=0.1)
    report = Scheduler(opts, aggregate=False, task=_dies_on_first_attempt(marker)).run()

    victim = int(marker.read_text())
    assert victim != os.getpid()
    assert (report.succeeded, report.failed, report.retried, report.infra_retried) == (1, 0, 0, 1)
    with session_scope(db) as s:
        job = s.scalars(select(Job)).one()
        assert (job.status, job.attempts) == ("succeeded", 1)      # a lost worker is not the job's fault
        assert s.scalar(select(func.count()).select_from(Result)) == 1
