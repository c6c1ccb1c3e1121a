"""A real two-node Ray cluster on one machine: a head (1 CPU) and a second node declaring one
(logical) GPU with its own LLC_CACHE_DIR; moto S3; Postgres; `llc scheduler` as its own process.

GPU jobs run only on the GPU node, CPU jobs anywhere; each node fills its own cache from S3;
every job lands once; after the GPU node is killed the GPU jobs left have nowhere to run, and
`llc status` says so instead of the sweep hanging silently.
"""
from __future__ import annotations

import os
import signal
import tempfile
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from services.store.db import session_scope
from services.store.models import Checkpoint, Job, Result, SweepJob
from services.sweeps.config import load_config
from services.sweeps.submit import submit_sweep
from tests.conftest import free_port
from tests.services.scheduler.ray_nodes import RayNode
from tests.services.sweeps.tiny_runs import tiny_overrides, tiny_run
from workers.cache import entry_key

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[3]
NO_GPU_NODE = "need {GPU: 1}; no node in the cluster offers it"


def _wait(what: str, check: Callable[[], bool], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.3)


def _llc(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "services.cli", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=180)


@pytest.fixture()
def cluster(db: str, s3_endpoint: str, tmp_root: Path) -> Iterator[dict[str, object]]:
    tmp_path = Path(tempfile.mkdtemp(prefix="two-node-", dir=tmp_root))   # kept for its logs
    ray_tmp = tempfile.mkdtemp(prefix="r", dir=tmp_root)   # short: Ray's socket paths must stay under 107 bytes
    env = {**os.environ, "COLUMNS": "250", "RAY_TMPDIR": ray_tmp, "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_AUTH_MODE": "disabled", "LLC_DATABASE_URL": db}
    port = free_port()
    caches = {"head": tmp_path / "cache-head", "gpu": tmp_path / "cache-gpu"}
    head = RayNode.start(env={**env, "LLC_CACHE_DIR": str(caches["head"])}, log=tmp_path / "head.log",
                         head_port=port, num_cpus=1)
    nodes = [head]
    try:
        address = f"127.0.0.1:{port}"
        gpu = RayNode.start(env={**env, "LLC_CACHE_DIR": str(caches["gpu"])}, log=tmp_path / "gpu.log",
                            address=address, num_cpus=1, num_gpus=1)
        nodes.append(gpu)
        driver_env = {**env, "RAY_ADDRESS": address, "LLC_CACHE_DIR": str(tmp_path / "cache-driver")}
        # The cluster is up when `llc doctor` sees both nodes (also checks the store and S3 from here).
        doctor: list[str] = []
        _wait(f"both Ray nodes to join (see {tmp_path}/head.log, gpu.log)",
              lambda: doctor.append(_llc(driver_env, "doctor").stdout) or "2 nodes, 2 CPUs, 1 GPUs" in doctor[-1],
              timeout=240)
        yield {"env": driver_env, "gpu": gpu, "caches": caches, "logs": tmp_path}
    finally:
        for node in reversed(nodes):
            node.stop()


def _checkpoints(db: str, sweep_id: int) -> list[tuple[str, str]]:
    with session_scope(db) as s:
        rows = s.execute(select(Checkpoint.uri, Checkpoint.fingerprint).join(Job, Job.checkpoint_id == Checkpoint.id)
                         .join(SweepJob, SweepJob.job_id == Job.id).where(SweepJob.sweep_id == sweep_id).distinct())
        return [(u, f) for u, f in rows]


def _statuses(db: str, sweep_id: int) -> list[str]:
    with session_scope(db) as s:
        return list(s.scalars(select(Job.status).join(SweepJob, SweepJob.job_id == Job.id)
                              .where(SweepJob.sweep_id == sweep_id)))


def test_gpu_jobs_run_only_on_the_gpu_node_and_a_lost_node_is_reported(db: str, s3_endpoint: str,
                                                                        cluster: dict[str, object]) -> None:
    env: dict[str, str] = cluster["env"]  # type: ignore[assignment]
    caches: dict[str, Path] = cluster["caches"]  # type: ignore[assignment]
    gpu_node: RayNode = cluster["gpu"]  # type: ignore[assignment]
    cpu_storage, _ = tiny_run(s3_endpoint, name="cpu-run")
    gpu_storage, _ = tiny_run(s3_endpoint, name="gpu-run")
    cpu = submit_sweep(load_config(tiny_overrides(cpu_storage, "cpu-run", extra=("sampler.epsilon=[1e-4]",))),
                       submitted_by="tester")
    gpu = submit_sweep(load_config(tiny_overrides(gpu_storage, "gpu-run", extra=(
        "sweep.resources.num_gpus=1", "sweep.seeds=[0,1,2,3]", "sampler.num_draws=[300]"))), submitted_by="tester")
    assert (cpu.new, gpu.new) == (3, 24)

    log = open(cluster["logs"] / "scheduler.log", "w")  # type: ignore[operator]
    sched = subprocess.Popen([sys.executable, "-m", "services.cli", "scheduler", "--max-in-flight", "6",
                              "--lease-seconds", "30", "--no-tracking", "-v"], env=env, cwd=ROOT, stdout=log,
                             stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait("the CPU sweep to finish and a first GPU job to land",
              lambda: set(_statuses(db, cpu.sweep_id)) == {"succeeded"} and "succeeded" in _statuses(db, gpu.sweep_id))
        assert set(_statuses(db, gpu.sweep_id)) != {"succeeded"}, "every GPU job finished before the node could be lost"
        gpu_node.kill()

        status: list[str] = []
        _wait("`llc status` to report GPU jobs that no node can run",
              lambda: status.append(_llc(env, "status", str(gpu.sweep_id)).stdout) or NO_GPU_NODE in status[-1],
              timeout=180)
        assert "waiting:" in status[-1] and "add a node with these resources" in " ".join(status[-1].split())
        assert sched.poll() is None, "the scheduler exited instead of waiting for a node that fits"
    finally:
        sched.send_signal(signal.SIGINT)     # graceful: hands its jobs back to pending
        try:
            sched.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(sched.pid, signal.SIGKILL)
            sched.wait(timeout=30)
        log.close()

    # Every job landed at most once; the CPU sweep completely, the GPU sweep up to the lost node.
    gpu_states = _statuses(db, gpu.sweep_id)
    with session_scope(db) as s:
        succeeded = s.scalar(select(func.count()).select_from(Job).where(Job.status == "succeeded"))
        results = s.scalar(select(func.count()).select_from(Result))
        per_job = s.execute(select(Result.job_id, func.count()).group_by(Result.job_id)).all()
    assert succeeded == results == 3 + gpu_states.count("succeeded")
    assert all(n == 1 for _, n in per_job)
    assert 1 <= gpu_states.count("succeeded") < 24
    assert set(gpu_states) <= {"succeeded", "pending"}, gpu_states   # nothing failed; the rest wait for a GPU node

    # Each node filled its own cache from S3; GPU checkpoints only ever reached the GPU node.
    def cached(node: str, ckpts: list[tuple[str, str]]) -> set[str]:
        return {u for u, f in ckpts if (caches[node] / "entries" / entry_key(u, f)).is_dir()}

    gpu_ckpts, cpu_ckpts = _checkpoints(db, gpu.sweep_id), _checkpoints(db, cpu.sweep_id)
    assert cached("gpu", gpu_ckpts), "the GPU node cached no checkpoint"
    assert cached("head", gpu_ckpts) == set(), "a GPU job ran on the head node, which has no GPU"
    assert cached("head", cpu_ckpts), "no CPU job ran on (and cached on) the head node"
    assert cached("head", cpu_ckpts) | cached("gpu", cpu_ckpts) == {u for u, _ in cpu_ckpts}
