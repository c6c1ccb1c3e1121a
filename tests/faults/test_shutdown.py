"""SIGTERM (systemd, Kubernetes) and Ctrl-C stop `llc scheduler` cleanly: jobs handed back, a
summary, exit code 0; bad options are refused before Ray starts; failed work exits 1."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from sqlalchemy import select

from services.cli import main as llc_main
from services.store import sweeps as store_sweeps
from services.store.db import session_scope
from services.store.models import Job
from services.sweeps.config import load_config
from services.sweeps.submit import submit_sweep
from tests.services.sweeps.tiny_runs import tiny_overrides, tiny_run

LLC = [sys.executable, "-c", "import sys; from services.cli import main; sys.exit(main())"]


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--lease-seconds", "0", "--lease-seconds=0.0 is invalid: it must be a positive number of seconds."),
    ("--max-attempts", "0", "--max-attempts=0 is invalid: it must be at least 1."),
    ("--infra-retries", "-1", "--infra-retries=-1 is invalid: it must be 0 or more."),
])
def test_bad_options_are_one_sentence_before_ray_starts(flag: str, value: str, message: str, db: str,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    import ray

    was = ray.is_initialized()
    assert llc_main(["scheduler", "--until-idle", flag, value]) == 2
    assert capsys.readouterr().err == f"llc: error: {message}\n"
    assert ray.is_initialized() == was


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_hands_jobs_back_with_a_summary_and_exit_0(sig: signal.Signals, storage: str, db: str,
                                                             ray_cluster: str) -> None:
    sub = submit_sweep(load_config(tiny_overrides(storage, extra=("sampler.epsilon=[1e-4]", "sweep.checkpoints.steps=[6]",
                                                                  "sampler.num_draws=[100000]"))), submitted_by="tester")
    env = dict(os.environ, RAY_ADDRESS=ray_cluster, LLC_DATABASE_URL=db)
    proc = subprocess.Popen([*LLC, "scheduler", "--no-tracking", "--max-in-flight", "1"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            with session_scope(db) as s:
                if store_sweeps.sweep_counts(s, sweep_id=sub.sweep_id)["running"] == 1:
                    break
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            if time.monotonic() > deadline:
                pytest.fail("the scheduler never started the job")
            time.sleep(0.2)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert f"stopped by {sig.name}" in out and "handed back 1" in out, out
    assert "Traceback" not in err and "Fatal Python error" not in err, err
    with session_scope(db) as s:
        job = s.scalars(select(Job)).one()
        assert (job.status, job.attempts, job.lease_owner) == ("pending", 0, None)


@pytest.mark.slow
def test_the_scheduler_exits_1_when_work_failed(s3_endpoint: str, db: str, ray_cluster: str) -> None:
    from workers.objectstore import open_store

    storage, _ = tiny_run(s3_endpoint)     # its own run: the checkpoint is corrupted below
    sub = submit_sweep(load_config(tiny_overrides(storage, extra=("sampler.epsilon=[1e-4]", "sweep.checkpoints.steps=[6]"))),
                       submitted_by="tester")
    with session_scope(db) as s:
        uri = s.scalars(select(Job)).one().spec["checkpoint_uri"]
    open_store(uri).put_bytes("model.safetensors", b"not safetensors")   # corrupt after submit: an input fault
    env = dict(os.environ, RAY_ADDRESS=ray_cluster, LLC_DATABASE_URL=db)
    done = subprocess.run([*LLC, "scheduler", "--no-tracking", "--until-idle", "--sweep", str(sub.sweep_id)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    assert "failed 1" in done.stdout
    with session_scope(db) as s:
        job = s.scalars(select(Job)).one()
        assert (job.status, job.attempts) == ("failed", 1)     # an input fault: failed at once, not retried


def test_nightly_exits_1_when_a_watched_sweep_cannot_be_submitted(s3_bucket: str, db: str,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    # The watched run has no checkpoints yet: a cron monitor must not read success.
    rc = llc_main(["nightly", "--once", "storage=s3", f"storage.uri=s3://{s3_bucket}", "schedule.sweeps=[small]"])
    captured = capsys.readouterr()
    assert rc == 1
    assert "skipped sweep config small" in captured.out
    assert "not clean: 1 sweep config(s) not submitted (small)" in captured.err
