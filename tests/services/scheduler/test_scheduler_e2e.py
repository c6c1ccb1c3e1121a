"""End to end on real parts: Hydra config → Postgres jobs → local Ray workers pulling tiny
checkpoints from moto S3 → results in Postgres + child runs on an `mlflow server`."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import boto3
import pytest
from mlflow.tracking import MlflowClient
from sqlalchemy import func, select

from services.scheduler.loop import Scheduler, SchedulerOptions
from services.store.results import sweep_results
from services.store.sweeps import get_sweep, sweep_counts
from services.store.db import session_scope
from services.store.models import Job, Result
from services.sweeps.config import load_config
from services.sweeps.submit import submit_sweep
from services.tracking import Tracker
from tests.services.sweeps.tiny_runs import tiny_overrides, tiny_run

pytestmark = pytest.mark.slow


def _run(db: str, sweep_id: int, tracker: Tracker | None = None, *, aggregate: bool = False) -> object:
    opts = SchedulerOptions(database_url=db, sweep_id=sweep_id, until_idle=True, max_in_flight=2, lease_seconds=30,
                            poll_seconds=0.2)
    return Scheduler(opts, tracker=tracker, aggregate=aggregate).run()


def test_sweep_runs_to_completion_in_store_and_mlflow(storage: str, db: str, ray_cluster: str,
                                                     mlflow_server: str) -> None:
    cfg = load_config(tiny_overrides(storage))
    sub = submit_sweep(cfg, submitted_by="tester")
    assert sub.new == 6
    report = _run(db, sub.sweep_id, tracker=Tracker(mlflow_server), aggregate=True)
    assert (report.succeeded, report.failed, report.tracking_errors) == (6, 0, 0)  # type: ignore[attr-defined]
    # The last job's arrival triggered the aggregation of the sweep.
    assert report.finished_sweeps == report.aggregated_sweeps == [sub.sweep_id]  # type: ignore[attr-defined]
    with session_scope(db) as s:
        rows = sweep_results(s, sweep_id=sub.sweep_id)
        sweep = get_sweep(s, sweep_id=sub.sweep_id)
        assert sweep.status == "finished" and sweep.mlflow_run_id
        parent = sweep.mlflow_run_id
    assert [r.status for r in rows] == ["succeeded"] * 6
    assert all(r.llc_mean is not None and len(r.llc_per_chain or []) == 2 for r in rows)
    client = MlflowClient(mlflow_server)
    for r in rows:
        assert r.mlflow_run_id
        run = client.get_run(r.mlflow_run_id)
        assert run.data.tags["mlflow.parentRunId"] == parent
        assert run.data.metrics["llc_mean"] == pytest.approx(r.llc_mean)
        assert run.data.params["checkpoint_step"] == str(r.step)
    # Resubmitting the finished sweep starts no new work.
    again = submit_sweep(cfg, submitted_by="tester")
    assert (again.new, again.already_done, again.already_queued) == (0, 6, 0)
    with session_scope(db) as s:
        assert s.scalar(select(func.count()).select_from(Job).where(Job.status == "pending")) == 0


def _status_text(sweep_id: int, capsys: pytest.CaptureFixture[str]) -> str:
    from services.cli import main as llc_main

    capsys.readouterr()
    assert llc_main(["status", str(sweep_id)]) == 0
    return capsys.readouterr().out


def test_missing_checkpoint_fails_only_its_jobs_and_divergence_is_final(
        s3_endpoint: str, db: str, ray_cluster: str, capsys: pytest.CaptureFixture[str]) -> None:
    storage, run_uri = tiny_run(s3_endpoint, name="broken-run")
    sub = submit_sweep(load_config(tiny_overrides(storage, run="broken-run", extra=(
        "sweep.checkpoints.steps=[0,6]", "sampler.epsilon=[1e-4,1e5]", "sampler.gamma=[1.0]"))), submitted_by="tester")
    assert sub.new == 4
    bucket = storage.removeprefix("s3://")
    boto3.client("s3", endpoint_url=s3_endpoint).delete_object(Bucket=bucket, Key="broken-run/step-6/model.safetensors")
    # An unreachable tracking server never loses a stored result: the store's outbox owes its runs.
    from services.store import outbox
    from tests.conftest import free_port

    report = _run(db, sub.sweep_id, tracker=Tracker(f"http://127.0.0.1:{free_port()}"))
    assert (report.succeeded, report.diverged, report.failed) == (1, 1, 2)  # type: ignore[attr-defined]
    assert report.tracking_errors >= 1  # type: ignore[attr-defined]
    with session_scope(db) as s:
        assert outbox.owed_count(s, sweep_ids=[sub.sweep_id]) == 2
    with session_scope(db) as s:
        rows = sweep_results(s, sweep_id=sub.sweep_id)
    by = {(r.step, r.hyperparameters["epsilon"]): r for r in rows}
    assert by[(0, 1e-4)].status == "succeeded"
    assert by[(0, 1e5)].status == "diverged" and by[(0, 1e5)].diverged
    for eps in (1e-4, 1e5):
        failed = by[(6, eps)]
        assert failed.status == "failed"
        assert f"{run_uri}/step-6" in (failed.error or "")
    with session_scope(db) as s:   # never retried: one attempt each
        assert {j.attempts for j in s.scalars(select(Job))} == {1}
    text = _status_text(sub.sweep_id, capsys)
    assert "failures (2)" in text and "step-6" in text and "λ̂ so far" in text


def test_killed_scheduler_is_replaced_and_every_job_runs_once(storage: str, db: str, ray_cluster: str,
                                                               tmp_root: object) -> None:
    sub = submit_sweep(load_config(tiny_overrides(storage, extra=("sampler.num_draws=[30]",))), submitted_by="tester")
    env = dict(os.environ, RAY_ADDRESS=ray_cluster, LLC_DATABASE_URL=db)
    base = [sys.executable, "-c", "import sys; from services.cli import main; sys.exit(main())", "scheduler", "--sweep", str(sub.sweep_id), "--lease-seconds", "3",
            "--no-tracking"]
    first = subprocess.Popen([*base, "--max-in-flight", "1"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            with session_scope(db) as s:
                counts = sweep_counts(s, sweep_id=sub.sweep_id)
            if counts["succeeded"] >= 1 and counts["running"] >= 1:
                break
            assert first.poll() is None, "the first scheduler exited before the sweep was half done"
            time.sleep(0.2)
        else:
            pytest.fail(f"the first scheduler made no progress: {counts}")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    with session_scope(db) as s:
        orphaned = [j.id for j in s.scalars(select(Job).where(Job.status == "running"))]
    assert orphaned
    second = subprocess.run([*base, "--until-idle", "--max-in-flight", "2"], env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    with session_scope(db) as s:
        jobs = s.scalars(select(Job)).all()
        assert {j.status for j in jobs} == {"succeeded"}
        assert s.scalar(select(func.count()).select_from(Result)) == len(jobs) == 6
        assert all(s.scalar(select(func.count()).select_from(Result).where(Result.job_id == j.id)) == 1 for j in jobs)
        assert {j.id: j.attempts for j in jobs if j.id in orphaned} == {i: 2 for i in orphaned}


def test_cancel_stops_running_ray_tasks(storage: str, db: str, ray_cluster: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    import threading

    from services.cli import main as llc_main

    sub = submit_sweep(load_config(tiny_overrides(storage, extra=("sampler.num_draws=[2000]",))), submitted_by="tester")
    opts = SchedulerOptions(database_url=db, sweep_id=sub.sweep_id, until_idle=True, max_in_flight=2, lease_seconds=30,
                            poll_seconds=0.2)
    scheduler = Scheduler(opts, aggregate=False)
    reports: list[object] = []
    thread = threading.Thread(target=lambda: reports.append(scheduler.run()))
    thread.start()
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            with session_scope(db) as s:
                counts = sweep_counts(s, sweep_id=sub.sweep_id)
            if counts["running"] == 2:
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"two jobs never ran at once within 60 s: {counts}")
        assert llc_main(["cancel", str(sub.sweep_id)]) == 0
        assert "6 pending/running job(s) cancelled" in capsys.readouterr().out
        thread.join(timeout=60)
    finally:
        if thread.is_alive():
            scheduler.stop()
            thread.join(timeout=30)
    report = reports[0]
    assert report.cancelled == 2 and report.succeeded == 0  # type: ignore[attr-defined]
    with session_scope(db) as s:
        assert get_sweep(s, sweep_id=sub.sweep_id).status == "cancelled"
        assert set(sweep_counts(s, sweep_id=sub.sweep_id).items()) >= {("cancelled", 6), ("succeeded", 0)}
        assert s.scalar(select(func.count()).select_from(Result)) == 0
