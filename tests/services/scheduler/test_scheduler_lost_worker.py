"""A Ray worker killed mid-job (SIGKILL, as the OOM killer or a lost node would) is retried:
an infrastructure fault, run again by the scheduler after a backoff without charging an
attempt, and the result lands exactly once."""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from services.scheduler.loop import Scheduler, SchedulerOptions
from services.store.db import session_scope
from services.store.models import Job, Result
from services.sweeps.config import load_config
from services.sweeps.submit import submit_sweep

pytestmark = pytest.mark.slow


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def _descends_from_us(pid: int) -> bool:
    """Started (through Ray's raylet) by this test process: never someone else's Ray worker."""
    me = os.getpid()
    while pid and pid != 1:
        pid = _parent(pid) or 0
        if pid == me:
            return True
    return False


def _job_workers() -> list[int]:
    """PIDs of this test's Ray workers running our task now (Ray retitles a busy worker
    `ray::execute_job`); other people's Ray workers on a shared machine are never candidates."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cmdline.startswith("ray::execute_job") and _descends_from_us(int(entry.name)):
            found.append(int(entry.name))
    return found


def test_a_killed_worker_is_requeued_and_its_job_lands_once(storage: str, db: str, ray_cluster: str) -> None:
    overrides = ["sweep=small", "storage=s3", f"storage.uri={storage}", "sweep.run=demo-run",
                 "sweep.dataset.uri=demo-run/dataset", "sweep.dataset.max_sequences=32", "sweep.checkpoints.steps=[6]",
                 "sampler.epsilon=[1e-4]", "sampler.num_chains=[2]", "sampler.num_draws=[3000]",
                 "sampler.num_burnin=[0]", "sampler.batch_size=[8]"]
    sub = submit_sweep(load_config(overrides), submitted_by="tester")
    assert sub.new == 1
    # No Ray-level retry: the scheduler's own infrastructure retry is what this test watches.
    opts = SchedulerOptions(database_url=db, sweep_id=sub.sweep_id, until_idle=True, max_in_flight=1,
                            lease_seconds=30, poll_seconds=0.2, ray_max_retries=0, max_attempts=3,
                            infra_backoff_s=0.1)
    scheduler = Scheduler(opts, aggregate=False)
    reports = []
    thread = threading.Thread(target=lambda: reports.append(scheduler.run()), daemon=True)
    thread.start()

    deadline = time.monotonic() + 120
    victims: list[int] = []
    while time.monotonic() < deadline and not victims:
        victims = _job_workers()
        time.sleep(0.05)
    assert victims, "the job never started on a Ray worker"
    time.sleep(0.5)
    for pid in victims:
        os.kill(pid, signal.SIGKILL)

    thread.join(timeout=300)
    assert not thread.is_alive()
    report = reports[0]
    assert (report.succeeded, report.failed, report.retried, report.infra_retried) == (1, 0, 0, 1)
    with session_scope(db) as s:
        job = s.scalars(select(Job)).one()
        assert (job.status, job.attempts) == ("succeeded", 1)      # a lost worker is not the job's fault
        assert s.scalar(select(func.count()).select_from(Result)) == 1
