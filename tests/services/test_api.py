"""services.api on real Postgres (and moto S3 for submit): DataFrames of status, results,
curves and stages, and `llc export` to CSV and Parquet."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from services import api
from services.cli import main as llc_main
from services.core.errors import NotFound
from services.store import jobs as store_jobs
from services.store import results as store_results
from services.store import stages as store_stages
from services.store import sweeps as store_sweeps
from services.store.db import session_scope
from services.store.entities import CheckpointInfo, NewResult, PlannedJob, StageRow
from services.store.jobkey import job_key
from tests.services.sweeps.tiny_runs import tiny_overrides

EPSILONS = (1e-4, 3e-4)
STEPS = (0, 100)


def _finished_sweep(url: str, name: str = "api-demo") -> int:
    """A sweep of 2 checkpoints × 2 ε × 1 seed: three results, one failure, two stages."""
    with session_scope(url) as s:
        run_id = store_sweeps.upsert_training_run(s, uri="s3://b/run")
        refs = [CheckpointInfo(id=0, training_run_id=run_id, step=st, uri=f"s3://b/run/step-{st}", fingerprint=f"fp{st}")
                for st in STEPS]
        store_sweeps.upsert_checkpoints(s, training_run_id=run_id, checkpoints=refs)
        planned = [PlannedJob(checkpoint=ck, key=job_key(checkpoint_uri=ck.uri, fingerprint=ck.fingerprint, dataset={},
                                                         sampler={"epsilon": eps}, seed=0, estimator_version="t"),
                              hyperparameters={"epsilon": eps, "gamma": 100.0, "sample_params": ["h.0", "h.1"]},
                              seed=0, spec={}) for ck in refs for eps in EPSILONS]
        sweep = store_sweeps.create_sweep(s, name=name, config={}, submitted_by="tester", training_run_id=run_id)
        store_jobs.add_jobs(s, sweep_id=sweep.id, jobs=planned)
        claimed = store_jobs.claim_jobs(s, owner="t", limit=10, lease_seconds=60)
        *ok, bad = claimed
        store_results.record_results(s, owner="t", results=[
            NewResult(job_id=j.id, diverged=False, mlflow_run_id=f"run-{j.id}", result={
                "llc_mean": 10.0 + j.step / 10, "llc_std": 1.0, "llc_per_chain": [9.0 + j.step / 10, 11.0 + j.step / 10],
                "init_loss": 2.0, "loss_wstar": 1.9, "num_chains": 2, "num_draws": 50, "wall_time_s": 3.0,
                "diagnostics": {"r_hat": 1.01, "ess": 80.0}, "host": "node-1", "device": "cpu"}) for j in ok])
        store_jobs.record_failure(s, job_id=bad.id, owner="t", error="boom", retry=False)
        store_stages.replace_stages(s, sweep_id=sweep.id, stages=[
            StageRow(hyperparameters=planned[0].hyperparameters, start_step=0, end_step=100, kind="A", llc_change=1.0,
                     loss_change=-0.5)])
        return sweep.id


def test_status_results_curves_and_stages_are_dataframes(db: str) -> None:
    sweep_id = _finished_sweep(db)
    status = api.status()
    assert isinstance(status, pd.DataFrame) and list(status["sweep_id"]) == [sweep_id]
    row = status.iloc[0]
    assert (row["status"], row["succeeded"], row["failed"], row["pending"], row["total"]) == ("finished", 3, 1, 0, 4)
    assert api.status("api-demo")["sweep_id"].tolist() == [sweep_id]

    res = api.results(sweep_id)
    assert len(res) == 4 and list(res.columns[:6]) == ["sweep_id", "job_id", "run", "checkpoint_uri", "step", "setting"]
    assert {"epsilon", "gamma", "sample_params", "seed", "llc_mean", "llc_std", "r_hat", "ess", "diverged",
            "wall_time_s", "mlflow_run_id", "loss_wstar"} <= set(res.columns)
    done = res[res["status"] == "succeeded"]
    assert done["r_hat"].tolist() == [1.01] * 3 and done["ess"].tolist() == [80.0] * 3
    assert set(done["mlflow_run_id"]) == {f"run-{j}" for j in done["job_id"]}
    assert res["sample_params"].iloc[0] == "h.0+h.1" and res["run"].iloc[0] == "s3://b/run"
    failed = res[res["status"] == "failed"].iloc[0]
    assert failed["error"] == "boom" and pd.isna(failed["llc_mean"])
    assert sorted(res["setting"].unique()) == ["eps=0.0001", "eps=0.0003"]

    curves = api.curves(sweep_id)
    assert len(curves) == 3 and set(curves["setting"]) == {"eps=0.0001", "eps=0.0003"}
    first = curves[(curves["setting"] == "eps=0.0001") & (curves["step"] == 100)].iloc[0]
    assert (first["llc_mean"], first["n_estimates"], first["loss_wstar"]) == (20.0, 2, 1.9)

    stages = api.stages(sweep_id)
    assert stages[["setting", "stage", "kind", "start_step", "end_step"]].values.tolist() == [
        ["eps=0.0001", 1, "A", 0, 100]]


def test_unknown_sweep_is_one_sentence(db: str) -> None:
    with pytest.raises(NotFound, match="no sweep named 'nope'"):
        api.results("nope")
    with pytest.raises(NotFound, match="no sweep with id 999"):
        api.curves(999)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_llc_export_writes_the_results_table(db: str, tmp_path: Path, fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    sweep_id = _finished_sweep(db, name=f"export-{fmt}")
    out = tmp_path / f"results.{fmt}"
    assert llc_main(["export", str(sweep_id), "--format", fmt, "--out", str(out)]) == 0
    assert f"{out}: 4 jobs of sweep {sweep_id}" in capsys.readouterr().out
    back = pd.read_csv(out) if fmt == "csv" else pd.read_parquet(out)
    expected = api.results(sweep_id)
    assert back["job_id"].tolist() == expected["job_id"].tolist()
    assert back["llc_mean"].fillna(-1).tolist() == expected["llc_mean"].fillna(-1).tolist()
    assert llc_main(["export", str(sweep_id), "--out", str(tmp_path / "missing" / "x.csv")]) == 2


def test_submit_from_a_notebook(storage: str, db: str) -> None:
    first = api.submit(tiny_overrides(storage), submitted_by="notebook")
    assert (first.jobs, first.new) == (6, 6)
    again = api.submit(tiny_overrides(storage))
    assert (again.new, again.already_queued) == (0, 6)
    status = api.status()
    assert status["pending"].tolist() == [6, 6] and status["submitted_by"].tolist()[0] == "notebook"
