"""The MLflow outbox: MLflow killed while a sweep runs loses nothing (results owe their runs in
the store); after a restart `llc sync-mlflow` logs each run once; a sweep whose jobs were all
done for an earlier sweep (nightly) gets its own parent, children and aggregate."""
from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from mlflow.tracking import MlflowClient

from services.cli import main as llc_main
from services.scheduler.loop import Scheduler, SchedulerOptions
from services.store import outbox
from services.store.db import session_scope
from services.store.sweeps import get_sweep
from services.sweeps.config import load_config
from services.sweeps.submit import submit_sweep
from services.tracking import Tracker
from tests.conftest import create_pg_database, drop_pg_database, free_port
from tests.mlflow_proc import MlflowProcess
from tests.services.sweeps.tiny_runs import tiny_overrides

pytestmark = pytest.mark.slow


@pytest.fixture()
def mlflow_proc(s3_endpoint: str, tmp_path: Path) -> Iterator[MlflowProcess]:
    backend = create_pg_database("llc_mlflow_faults")
    bucket = f"mlflow-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    server = MlflowProcess(backend=backend, artifacts=f"s3://{bucket}/artifacts", port=free_port(), log_dir=tmp_path,
                           s3_endpoint=s3_endpoint)
    server.start()
    yield server
    server.kill()
    drop_pg_database(backend)


def _runs(client: MlflowClient, sweep_name: str, sweep_id: int, kind: str) -> list:
    exp = client.get_experiment_by_name(sweep_name)
    assert exp is not None
    return client.search_runs([exp.experiment_id],
                              f"tags.`llc.sweep_id` = '{sweep_id}' and tags.`llc.kind` = '{kind}'", max_results=1000)


def test_mlflow_down_mid_sweep_loses_no_run_and_nightly_sweeps_get_theirs(
        storage: str, db: str, ray_cluster: str, mlflow_proc: MlflowProcess,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    cfg = load_config(tiny_overrides(storage, extra=("sweep.name=outbox",)))
    sub = submit_sweep(cfg, submitted_by="tester")
    tracker = Tracker(mlflow_proc.uri)
    mlflow_proc.kill()                                         # MLflow goes away for the whole run
    opts = SchedulerOptions(database_url=db, sweep_id=sub.sweep_id, until_idle=True, max_in_flight=2, poll_seconds=0.2)
    report = Scheduler(opts, tracker=tracker, aggregate=True).run()
    assert (report.succeeded, report.failed) == (6, 0) and report.tracking_errors >= 1
    with session_scope(db) as s:
        assert outbox.owed_sweeps(s) == [sub.sweep_id]
        assert outbox.owed_count(s, sweep_ids=[sub.sweep_id]) == 6   # every stored result still owes its run

    mlflow_proc.start()                                        # back, with everything it held
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_proc.uri)
    assert llc_main(["sync-mlflow", str(sub.sweep_id)]) == 0
    assert "6 child run(s) logged" in capsys.readouterr().out
    assert llc_main(["sync-mlflow"]) == 0                      # idempotent: nothing left, nothing duplicated
    assert "0 child run(s) logged" in capsys.readouterr().out

    client = MlflowClient(mlflow_proc.uri)
    children = _runs(client, "outbox", sub.sweep_id, "job")
    assert len(children) == 6 and len({r.data.tags["llc.job_key"] for r in children}) == 6
    assert all(r.info.status == "FINISHED" for r in children)
    with session_scope(db) as s:
        parent_id = get_sweep(s, sweep_id=sub.sweep_id).mlflow_run_id
        assert outbox.owed_sweeps(s) == []
    assert client.get_run(parent_id).info.status == "FINISHED"
    assert all(r.data.tags["mlflow.parentRunId"] == parent_id for r in children)
    assert client.search_runs([children[0].info.experiment_id],
                              f"tags.`llc.kind` = 'aggregate' and tags.`llc.sweep_id` = '{sub.sweep_id}'")

    # Nightly: the same jobs, all done already. Nothing runs, but the sweep gets its own record.
    nightly = submit_sweep(cfg, submitted_by="schedule:nightly")
    assert (nightly.new, nightly.already_done) == (0, 6)
    assert llc_main(["sync-mlflow"]) == 0
    assert "6 child run(s) logged" in capsys.readouterr().out
    own = _runs(client, "outbox", nightly.sweep_id, "job")
    assert len(own) == 6 and {r.data.tags["llc.job_key"] for r in own} == {r.data.tags["llc.job_key"] for r in children}
    with session_scope(db) as s:
        nightly_parent = get_sweep(s, sweep_id=nightly.sweep_id).mlflow_run_id
    assert nightly_parent and nightly_parent != parent_id
    assert client.get_run(nightly_parent).info.status == "FINISHED"
    assert client.search_runs([children[0].info.experiment_id],
                              f"tags.`llc.kind` = 'aggregate' and tags.`llc.sweep_id` = '{nightly.sweep_id}'")
