"""Postgres stopped mid-sweep (a private instance, never the shared server): the scheduler
waits it out with its Ray tasks running and its fetched results kept; every job ends exactly
once and no attempt is charged. A scheduler that died during an outage leaves a spool that
the next one stores."""
from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from services.scheduler.loop import Scheduler, SchedulerOptions, SchedulerReport
from services.scheduler.outage import Spool
from services.store import jobs as store_jobs
from services.store import sweeps as store_sweeps
from services.store.db import session_scope, upgrade
from services.store.models import Job, Result
from services.sweeps.config import load_config
from services.sweeps.expand import spec_from_dict
from services.sweeps.submit import submit_sweep
from tests.faults.private_pg import PrivatePostgres
from tests.faults.waiting import wait_for
from tests.services.sweeps.tiny_runs import tiny_overrides
from workers.job import run_job

pytestmark = pytest.mark.slow


@pytest.fixture()
def private_pg(monkeypatch: pytest.MonkeyPatch) -> Iterator[PrivatePostgres]:
    pg = PrivatePostgres()
    pg.start()
    upgrade(pg.url)
    monkeypatch.setenv("LLC_DATABASE_URL", pg.url)
    yield pg
    pg.remove()


def _succeeded(url: str, sweep_id: int) -> int:
    try:
        with session_scope(url) as s:
            return store_sweeps.sweep_counts(s, sweep_id=sweep_id)["succeeded"]
    except Exception:   # the store is down right now
        return -1


def _assert_each_job_once(url: str, n: int) -> None:
    with session_scope(url) as s:
        jobs = s.scalars(select(Job)).all()
        assert len(jobs) == n and {j.status for j in jobs} == {"succeeded"}
        assert {j.attempts for j in jobs} == {1}                  # the outage charged no attempt
        assert s.scalar(select(func.count()).select_from(Result)) == n
        assert s.scalar(select(func.count(func.distinct(Result.job_id)))) == n


def test_postgres_stopped_mid_sweep_is_waited_out(storage: str, private_pg: PrivatePostgres, ray_cluster: str,
                                                 tmp_path: Path) -> None:
    url = private_pg.url
    sub = submit_sweep(load_config(tiny_overrides(storage, extra=("sampler.num_draws=[40]",))), submitted_by="tester")
    opts = SchedulerOptions(database_url=url, sweep_id=sub.sweep_id, until_idle=True, max_in_flight=2, lease_seconds=60,
                            poll_seconds=0.2, outage_budget_s=300, spool_dir=tmp_path / "spool")
    scheduler = Scheduler(opts, aggregate=False)
    reports: list[SchedulerReport] = []
    thread = threading.Thread(target=lambda: reports.append(scheduler.run()), daemon=True)
    thread.start()
    try:
        wait_for("the first result", lambda: _succeeded(url, sub.sweep_id) >= 1)
        private_pg.stop()
        wait_for("the scheduler to notice the outage", lambda: scheduler.report.store_outages >= 1)
        assert thread.is_alive(), "the scheduler exited on a store outage"
        private_pg.start()
        thread.join(timeout=600)
    finally:
        if thread.is_alive():
            scheduler.stop()
            thread.join(timeout=120)
    report = reports[0]
    assert (report.succeeded, report.failed, report.retried) == (6, 0, 0)
    assert report.store_outages >= 1
    assert not list((tmp_path / "spool").glob("*.json"))           # the spool was emptied once stored
    _assert_each_job_once(url, 6)


def test_a_dead_schedulers_spool_is_stored_by_the_next_one(storage: str, private_pg: PrivatePostgres,
                                                           ray_cluster: str, tmp_path: Path) -> None:
    url = private_pg.url
    sub = submit_sweep(load_config(tiny_overrides(storage)), submitted_by="tester")
    # A scheduler claimed a job, fetched its result, and was killed while the store was down.
    with session_scope(url) as s:
        job = store_jobs.claim_jobs(s, owner="scheduler@dead:1", limit=1, lease_seconds=600)[0]
    spec = dataclasses.replace(spec_from_dict(job.spec), cache_dir=str(tmp_path / "cache"))
    Spool(tmp_path / "spool", "scheduler@dead:1").save([(job.id, run_job(spec).to_dict())])

    opts = SchedulerOptions(database_url=url, sweep_id=sub.sweep_id, until_idle=True, max_in_flight=2, poll_seconds=0.2,
                            spool_dir=tmp_path / "spool")
    report = Scheduler(opts, aggregate=False).run()
    assert report.replayed == 1 and report.succeeded == 5
    assert not list((tmp_path / "spool").glob("*.json"))
    _assert_each_job_once(url, 6)
