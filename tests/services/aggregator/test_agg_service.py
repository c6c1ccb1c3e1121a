"""aggregate_sweep over a real small sweep in Postgres, logging to a real MLflow server."""
from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from services.aggregator import aggregate_sweep
from services.cli import main as llc_main
from services.store import db, session_scope
from services.store.jobkey import job_key
from services.store.entities import NewResult, PlannedJob
from services.store.jobs import add_jobs, claim_jobs, record_failure
from services.store.results import record_results
from services.store.stages import list_stages
from services.store.sweeps import create_sweep, get_sweep, upsert_checkpoint, upsert_training_run
from services.tracking import Tracker

STEPS = [0, 10, 30, 100, 300, 1000, 3000, 10000, 30000]
EPSILONS = [1e-4, 3e-4, 1e-3]
SEEDS = [0, 1]
OFFSETS = [-0.3, 0.3]      # per-chain offsets around the true λ̂
DIVERGED_AT = (1e-3, 3000, 1)  # (ε, step, seed) of the one diverged job
FAILED_AT = (1e-4, 10, 1)      # one job that failed for good


def _sig(t: float) -> float:
    return 1.0 / (1.0 + math.exp(-t))


def true_llc(step: int, eps: float) -> float:
    x = math.log(step + 1)
    return (10 + 30 * _sig((x - math.log(300)) / 0.4) - 12 * _sig((x - math.log(3000)) / 0.4)) * (1 + 100 * eps)


def chains(step: int, eps: float, seed: int) -> list[float]:
    return [true_llc(step, eps) + o + 0.1 * seed for o in OFFSETS]


def eval_loss(step: int) -> float:
    return 3 - 2 * _sig((math.log(step + 1) - math.log(300)) / 0.4)


def heads(step: int) -> dict:
    """Head scores: 0.0 becomes a previous-token head and 1.0 an induction head in the rise; 0.1 never moves."""
    rise = _sig((math.log(step + 1) - math.log(300)) / 0.4)
    return {"0.0": {"prev_token": 0.1 + 0.8 * rise, "induction": 0.05}, "0.1": {"prev_token": 0.1, "induction": 0.05},
            "1.0": {"prev_token": 0.05, "induction": 0.05 + 0.7 * rise}}


def _hyper(eps: float) -> dict:
    return {"epsilon": eps, "gamma": 100.0, "nbeta": None, "num_chains": 2, "num_draws": 50, "num_burnin": 5,
            "batch_size": 16, "steps_between_draws": 1, "baseline": "paired"}


@pytest.fixture(scope="module")
def store_url(pg_url: str) -> Iterator[str]:
    db.upgrade(pg_url)
    yield pg_url
    db.dispose_engines()


@pytest.fixture()
def sweep_id(store_url: str, tmp_path: Path) -> int:
    """Checkpoints (with metadata.json) in a file:// store, and a sweep whose jobs ran."""
    run_dir = tmp_path / "objects" / "run"
    with session_scope(store_url) as s:
        tr = upsert_training_run(s, uri=run_dir.as_uri() + f"-{uuid.uuid4().hex[:6]}")
        sweep = create_sweep(s, name=f"agg-{uuid.uuid4().hex[:8]}", config={"sampler": {"epsilon": EPSILONS}},
                             submitted_by="tests", training_run_id=tr)
        new = []
        for step in STEPS:
            ck_dir = run_dir / f"step-{step}"
            ck_dir.mkdir(parents=True)
            (ck_dir / "metadata.json").write_text(json.dumps({"step": step, "loss": eval_loss(step),
                                                              "train_loss": eval_loss(step) + 0.01,
                                                              "heads": heads(step)}))
            ck = upsert_checkpoint(s, training_run_id=tr, step=step, uri=ck_dir.as_uri(), fingerprint=f"fp{step}-{tr}")
            for eps in EPSILONS:
                for seed in SEEDS:
                    key = job_key(checkpoint_uri=ck.uri, fingerprint=ck.fingerprint, dataset={"uri": "d"},
                                  sampler=_hyper(eps), seed=seed, estimator_version="test")
                    new.append(PlannedJob(checkpoint=ck, key=key, hyperparameters=_hyper(eps), seed=seed, spec={}))
        add_jobs(s, sweep_id=sweep.id, jobs=new)
        sid = sweep.id
    with session_scope(store_url) as s:
        for job in claim_jobs(s, owner="tests", limit=1000, lease_seconds=600):
            eps, step, seed = job.hyperparameters["epsilon"], job.step, job.seed
            if (eps, step, seed) == FAILED_AT:
                record_failure(s, job_id=job.id, owner="tests", error="boom", retry=False)
                continue
            diverged = (eps, step, seed) == DIVERGED_AT
            values = chains(step, eps, seed)
            record_results(s, owner="tests", results=[NewResult(job_id=job.id, diverged=diverged, result={
                "llc_mean": float("nan") if diverged else float(np.mean(values)), "llc_std": float(np.std(values)),
                "llc_per_chain": [float("nan")] * 2 if diverged else values, "init_loss": eval_loss(step) + 0.05,
                "diagnostics": {"r_hat": 1.01 + eps}})])
    return sid


def test_aggregate_sweep_end_to_end(store_url: str, sweep_id: int, mlflow_server: str, tmp_path: Path) -> None:
    tracker = Tracker(mlflow_server)
    report = aggregate_sweep(sweep_id=sweep_id, database_url=store_url, tracker=tracker, out_dir=tmp_path / "agg")
    assert report.tracking_error is None
    n_jobs = len(STEPS) * len(EPSILONS) * len(SEEDS)
    assert report.counts == {"succeeded": n_jobs - 2, "diverged": 1, "failed": 1}
    assert report.left_out == {"diverged": 1, "failed": 1}
    assert report.loss_source == "loss"  # metadata.json's eval loss beats the results' L_n(w*)

    # Curves pool chains × seeds; the failed job is left out of its checkpoint.
    by_eps = {c.hyperparameters["epsilon"]: c for c in report.curves}
    c1 = by_eps[1e-4]
    assert [p.step for p in c1.points] == STEPS
    p10 = next(p for p in c1.points if p.step == 10)
    assert p10.n_estimates == 2 and p10.llc_mean == pytest.approx(np.mean(chains(10, 1e-4, 0)))
    p300 = next(p for p in c1.points if p.step == 300)
    pooled = chains(300, 1e-4, 0) + chains(300, 1e-4, 1)
    assert p300.llc_mean == pytest.approx(np.mean(pooled)) and p300.llc_std == pytest.approx(np.std(pooled, ddof=1))

    # Stability: 1e-3 diverged once, 1e-4 has a failed job → 3e-4 is the largest usable ε.
    assert report.recommended is not None and report.recommended.hyperparameters["epsilon"] == 3e-4
    verdicts = {v.epsilon: v for v in report.stability}
    assert not verdicts[1e-3].usable and "diverged" in verdicts[1e-3].reasons[0]
    assert verdicts[3e-4].converged and verdicts[3e-4].stable

    # Stages of the recommended setting: type A (rise, loss falls) then B (fall, loss flat) near the peak.
    rec = report.stages_for(report.recommended.key)
    assert [s.kind for s in rec] == ["A", "B"]
    # ... with bootstrap intervals around each boundary and type probabilities; the heads that formed named.
    rec_items = [st for st in report.stages if st.setting_key == report.recommended.key]
    a_item, b_item = rec_items
    assert a_item.uncertainty is not None and a_item.uncertainty.resolved
    shared = a_item.uncertainty.end
    assert shared is not None and shared.low <= shared.step <= shared.high and shared.presence > 0.5
    assert a_item.uncertainty.kind_probability["A"] > 0.5
    assert "0.0 prev-token +" in a_item.heads and "1.0 induction +" in a_item.heads and "0.1" not in a_item.heads
    peak = max(STEPS, key=lambda st: true_llc(st, 3e-4))
    assert 300 <= rec[0].end_step <= 3000 and abs(math.log(rec[0].end_step / peak)) < 1.0
    with session_scope(store_url) as s:
        stored = list_stages(s, sweep_id=sweep_id)
        assert len(stored) == sum(1 for st in report.stages if st.stage.kind in ("A", "B"))
        assert {(st.start_step, st.end_step, st.kind) for st in stored if st.hyperparameters["epsilon"] == 3e-4} == \
            {(st.start_step, st.end_step, st.kind) for st in rec}
        assert get_sweep(s, sweep_id=sweep_id).mlflow_run_id == report.parent_run_id

    # MLflow: `llc` of the recommended setting at step = training step; one series per setting.
    client = MlflowClient(mlflow_server)
    agg = client.get_run(report.mlflow_run_id)
    assert agg.data.tags["mlflow.parentRunId"] == report.parent_run_id
    hist = sorted((m.step, m.value) for m in client.get_metric_history(report.mlflow_run_id, "llc"))
    expected = [(st, float(np.mean(chains(st, 3e-4, 0) + chains(st, 3e-4, 1)))) for st in STEPS]
    assert [h[0] for h in hist] == STEPS
    assert [h[1] for h in hist] == pytest.approx([e[1] for e in expected])
    llc_keys = sorted(k for k in agg.data.metrics if k.startswith("llc/"))
    assert len(llc_keys) == 3
    diverged_series = client.get_metric_history(report.mlflow_run_id, f"llc/{by_eps[1e-3].metric_label}")
    assert sorted(m.step for m in diverged_series) == STEPS  # the other seed still measured step 3000
    artifacts = {a.path for a in client.list_artifacts(report.mlflow_run_id)}
    assert {"overview.png", "stages.csv", "stages.json", "stability.csv", "heads.png", "stages-heads.png"} <= artifacts
    prev = sorted((m.step, m.value) for m in client.get_metric_history(report.mlflow_run_id, "heads/0.0/prev_token"))
    assert [p[0] for p in prev] == STEPS and prev[-1][1] == pytest.approx(heads(STEPS[-1])["0.0"]["prev_token"])
    stored_details = json.loads((tmp_path / "agg" / "stages.json").read_text())["stages"]
    assert all("kind_probability" in d and "end_interval" in d for d in stored_details)

    # Plots: one per setting, the overview, the head heatmap and stages+heads: real PNGs of a sane size.
    assert len(report.plots) == 6
    for path in report.plots:
        with Image.open(path) as img:
            assert img.format == "PNG" and img.size[0] >= 600 and img.size[1] >= 300

    # Re-aggregating replaces: same stage rows, same MLflow aggregate run, no doubled history.
    again = aggregate_sweep(sweep_id=sweep_id, database_url=store_url, tracker=tracker, out_dir=tmp_path / "agg")
    with session_scope(store_url) as s:
        assert len(list_stages(s, sweep_id=sweep_id)) == len(stored)
    assert again.mlflow_run_id == report.mlflow_run_id and again.parent_run_id == report.parent_run_id
    assert len(client.get_metric_history(report.mlflow_run_id, "llc")) == len(STEPS)


def test_cli_prints_stages_and_recommendation(store_url: str, sweep_id: int, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    code = llc_main(["aggregate", str(sweep_id), "--database-url", store_url, "--out-dir", str(tmp_path / "o"),
                     "--no-mlflow"])
    out = capsys.readouterr().out
    assert code == 0
    assert "Developmental stages" in out and "Recommended setting:" in out and "eps=0.0003" in out
    assert str(tmp_path / "o" / "overview.png") in out.replace("\n", "")
    assert llc_main(["aggregate", "no-such-sweep", "--database-url", store_url, "--no-mlflow"]) == 2
    assert "there is no sweep named 'no-such-sweep'" in capsys.readouterr().err
