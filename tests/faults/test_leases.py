"""Leases: a live scheduler takes back a dead one's jobs within a lease period (not only at
start-up or in --until-idle), and stops its own copy of a job another scheduler took over."""
from __future__ import annotations

import threading

import pytest
from sqlalchemy import func, select, update

from services.scheduler.loop import Scheduler, SchedulerOptions, SchedulerReport
from services.store import jobs as store_jobs
from services.store import sweeps as store_sweeps
from services.store.db import session_scope
from services.store.models import Job, Result
from services.sweeps.config import load_config
from services.sweeps.submit import submit_sweep
from tests.faults.waiting import wait_for
from tests.services.sweeps.tiny_runs import tiny_overrides

pytestmark = pytest.mark.slow


def _start(opts: SchedulerOptions) -> tuple[Scheduler, threading.Thread, list[SchedulerReport]]:
    scheduler = Scheduler(opts, aggregate=False)
    reports: list[SchedulerReport] = []
    thread = threading.Thread(target=lambda: reports.append(scheduler.run()), daemon=True)
    thread.start()
    return scheduler, thread, reports


def _counts(db: str, sweep_id: int) -> dict[str, int]:
    with session_scope(db) as s:
        return store_sweeps.sweep_counts(s, sweep_id=sweep_id)


def test_a_running_scheduler_takes_back_a_dead_ones_jobs(storage: str, db: str, ray_cluster: str) -> None:
    sub = submit_sweep(load_config(tiny_overrides(storage)), submitted_by="tester")
    # A scheduler claimed three jobs and died (kill -9): its leases run out 4 s from now.
    with session_scope(db) as s:
        orphans = [j.id for j in store_jobs.claim_jobs(s, owner="scheduler@dead:1", limit=3, lease_seconds=4)]
    # A long-running scheduler (neither --until-idle nor --once) started within that lease.
    scheduler, thread, reports = _start(SchedulerOptions(database_url=db, sweep_id=sub.sweep_id, max_in_flight=2,
                                                         lease_seconds=4, poll_seconds=0.2))
    try:
        wait_for("every job, orphans included, to succeed", lambda: _counts(db, sub.sweep_id)["succeeded"] == 6)
    finally:
        scheduler.stop()
        thread.join(timeout=120)
    report = reports[0]
    assert report.released_orphans == 3 and report.succeeded == 6 and report.failed == 0
    with session_scope(db) as s:
        jobs = s.scalars(select(Job)).all()
        assert {j.id: j.attempts for j in jobs} == {j.id: 2 if j.id in orphans else 1 for j in jobs}
        assert s.scalar(select(func.count()).select_from(Result)) == 6
        assert s.scalar(select(func.count(func.distinct(Result.job_id)))) == 6


def test_a_job_taken_over_by_another_scheduler_is_stopped_here(storage: str, db: str, ray_cluster: str,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    from services.cli import main as llc_main

    sub = submit_sweep(load_config(tiny_overrides(storage, extra=("sampler.epsilon=[1e-4]", "sweep.checkpoints.steps=[6]",
                                                                  "sampler.num_draws=[100000]"))), submitted_by="tester")
    scheduler, thread, reports = _start(SchedulerOptions(database_url=db, sweep_id=sub.sweep_id, max_in_flight=1,
                                                         lease_seconds=30, poll_seconds=0.2))
    try:
        wait_for("the job to start", lambda: _counts(db, sub.sweep_id)["running"] == 1, timeout=120)
        capsys.readouterr()
        assert llc_main(["status"]) == 0                  # `llc status` shows the live scheduler
        out = capsys.readouterr().out
        assert "schedulers" in out and "running" in out and "no scheduler is running" not in out
        # Our lease lapsed (a long pause) and another scheduler claimed the job meanwhile.
        with session_scope(db) as s:
            s.execute(update(Job).values(lease_owner="scheduler@other:2"))
        wait_for("this scheduler to stop its copy", lambda: scheduler.report.taken_over == 1, timeout=60)
    finally:
        scheduler.stop()
        thread.join(timeout=120)
    report = reports[0]
    assert (report.taken_over, report.handed_back, report.succeeded) == (1, 0, 0)
    capsys.readouterr()
    assert llc_main(["status"]) == 0                      # a clean stop removes its heartbeat
    assert "no scheduler is running" in capsys.readouterr().out
    with session_scope(db) as s:
        job = s.scalars(select(Job)).one()
        assert (job.status, job.lease_owner) == ("running", "scheduler@other:2")   # left to its new owner
        assert s.scalar(select(func.count()).select_from(Result)) == 0
