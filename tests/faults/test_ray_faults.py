"""Ray-level faults, with real Ray: a task killed for memory by Ray's own memory monitor is an
infrastructure fault whose retry goes to another node; a task cancelled from outside the
scheduler hands its job back at once, uncharged, instead of waiting out its lease."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
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
from tests.conftest import free_port
from tests.faults.waiting import wait_for
from tests.services.scheduler.ray_nodes import RayNode
from tests.services.sweeps.tiny_runs import tiny_overrides

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def _llc(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "services.cli", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture()
def oom_cluster(db: str, s3_endpoint: str, tmp_root: Path) -> Iterator[dict[str, Any]]:
    """Two real Ray nodes of one CPU each: the head's memory monitor kills every task it runs
    (usage threshold 0.1 %: Ray's OutOfMemoryError, as on a node out of memory); the other is sound."""
    logs = Path(tempfile.mkdtemp(prefix="oom-", dir=tmp_root))
    env = {**os.environ, "RAY_TMPDIR": tempfile.mkdtemp(prefix="r", dir=tmp_root), "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_AUTH_MODE": "disabled", "LLC_DATABASE_URL": db, "LLC_CACHE_DIR": str(logs / "cache")}
    port = free_port()
    head = RayNode.start(env={**env, "RAY_memory_usage_threshold": "0.001"}, log=logs / "head.log", head_port=port,
                         num_cpus=1)
    nodes = [head]
    try:
        nodes.append(RayNode.start(env=env, log=logs / "sound.log", address=f"127.0.0.1:{port}", num_cpus=1))
        driver_env = {**env, "RAY_ADDRESS": f"127.0.0.1:{port}", "COLUMNS": "250"}
        seen: list[str] = []
        wait_for(f"both Ray nodes to join (see {logs}/head.log, sound.log)",
                 lambda: seen.append(_llc(driver_env, "doctor").stdout) or "2 nodes, 2 CPUs" in seen[-1])
        yield {"env": driver_env, "logs": logs}
    finally:
        for node in reversed(nodes):
            node.stop()


def test_a_task_killed_for_memory_is_retried_on_another_node_without_an_attempt(
        storage: str, db: str, oom_cluster: dict[str, Any]) -> None:
    sub = submit_sweep(load_config(tiny_overrides(storage, extra=("sampler.epsilon=[1e-4]",))), submitted_by="tester")
    assert sub.new == 3
    out = _llc(oom_cluster["env"], "scheduler", "--no-tracking", "--until-idle", "--sweep", str(sub.sweep_id),
               "--max-in-flight", "3", "--lease-seconds", "60", "--max-attempts", "1", "--infra-retries", "2", "-v")
    log = out.stdout + out.stderr
    (oom_cluster["logs"] / "scheduler.log").write_text(log)
    assert out.returncode == 0, log[-4000:]
    assert "OutOfMemoryError" in log, "no task was killed for memory on the head node:\n" + log[-4000:]

    head = ray_node_ids(log, "OutOfMemoryError")
    with session_scope(db) as s:
        jobs = s.scalars(select(Job)).all()
        assert {(j.status, j.attempts) for j in jobs} == {("succeeded", 1)}   # OOM charged no attempt
        assert s.scalar(select(func.count(func.distinct(Result.job_id)))) == s.scalar(
            select(func.count()).select_from(Result)) == 3
        runs = [r.payload["attempt_nodes"] for r in s.scalars(select(Result))]
    retried = [nodes for nodes in runs if len(nodes) > 1]
    assert retried, f"no job needed a retry: {runs}"
    for nodes in retried:
        *lost, landed = nodes
        assert set(lost) <= head and landed not in lost, f"a retry went back to the node it was killed on: {nodes}"
    assert {nodes[-1] for nodes in runs}.isdisjoint(head), f"a job finished on the node that kills everything: {runs}"


def ray_node_ids(log: str, marker: str) -> set[str]:
    """The Ray node ids the scheduler named on its log lines that mention `marker`."""
    found = set()
    for line in log.splitlines():
        if marker in line and "(Ray node " in line:
            found.add(line.split("(Ray node ", 1)[1].split(")", 1)[0])
    return found


def _blocks_first_attempt(marker: Path) -> Any:
    """The real Ray task, except that its first run waits until it is cancelled (a later run leaves
    `marker.again` behind as it starts)."""

    def run(spec: Any, attempt: str | None = None) -> dict[str, Any]:
        from services.scheduler.task import execute_job

        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            marker.with_name(marker.name + ".again").touch()
            return execute_job(spec, attempt)
        while True:   # short sleeps: Ray's cancel interrupts running Python code, not one long C call
            time.sleep(0.05)

    return ray.remote(run)


def test_a_task_cancelled_outside_the_scheduler_hands_its_job_back_at_once(
        storage: str, db: str, ray_cluster: str, tmp_path: Path) -> None:
    sub = submit_sweep(load_config(tiny_overrides(storage, extra=("sampler.epsilon=[1e-4]", "sweep.checkpoints.steps=[6]"))),
                       submitted_by="tester")
    assert sub.new == 1
    marker = tmp_path / "first-run"
    # A lease far longer than the test may wait, and one attempt: a job left "running" until its
    # lease expired, or charged an attempt for the cancel, fails below.
    opts = SchedulerOptions(database_url=db, sweep_id=sub.sweep_id, until_idle=True, max_in_flight=1,
                            lease_seconds=3600, poll_seconds=0.2, max_attempts=1)
    sched = Scheduler(opts, aggregate=False, task=_blocks_first_attempt(marker))
    done: list[Any] = []
    thread = threading.Thread(target=lambda: done.append(sched.run()), daemon=True)
    thread.start()
    try:
        wait_for("the job's first run to start", marker.exists)
        refs = list(sched._inflight)                     # the running task's ObjectRef, as a dashboard would see it
        assert len(refs) == 1
        ray.cancel(refs[0])                              # from outside the scheduler's own code
        # Handed back, not left "running" until its hour-long lease ends: the job runs again. How
        # long that run then takes (a cold Ray worker, the estimate) is the box's, not the test's.
        wait_for("the cancelled job to be handed back and run again", marker.with_name("first-run.again").exists)
        wait_for("the sweep to finish after the job's second run", lambda: not thread.is_alive())
    finally:
        sched.stop()
        thread.join(timeout=60)
    report = done[0]
    assert (report.succeeded, report.failed, report.retried) == (1, 0, 1)
    with session_scope(db) as s:
        job = s.scalars(select(Job)).one()
        assert (job.status, job.attempts) == ("succeeded", 1)
        assert s.scalar(select(func.count()).select_from(Result)) == 1
