"""The store's jobs, sweeps, results and stages on SQLite and Postgres: claiming, leases,
refusals, status derivation; every read a frozen snapshot."""
from __future__ import annotations

import math
import threading
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select, update

from services.store import jobs as sj
from services.store import results as sr
from services.store import stages as sst
from services.store import sweeps as ss
from services.store.db import session_scope
from services.store.entities import CheckpointInfo, NewResult, PlannedJob, StageRow
from services.store.errors import JobStateError, NotFound
from services.store.jobkey import job_key
from services.store.models import Job, Result, Stage


def _make_jobs(s, n_steps: int = 3, seeds: tuple[int, ...] = (0, 1), lr: float = 1e-4, run: str = "s3://b/run"):
    run_id = ss.upsert_training_run(s, uri=run)
    refs = [CheckpointInfo(id=0, training_run_id=run_id, step=step * 100, uri=f"{run}/step-{step * 100}",
                           fingerprint=f"fp{step}") for step in range(n_steps)]
    ss.upsert_checkpoints(s, training_run_id=run_id, checkpoints=refs)
    out = []
    for ck in refs:
        for seed in seeds:
            hp = {"lr": lr, "gamma": 100.0}
            key = job_key(checkpoint_uri=ck.uri, fingerprint=ck.fingerprint, dataset={"n": 64}, sampler=hp, seed=seed, estimator_version="1")
            out.append(PlannedJob(checkpoint=ck, key=key, hyperparameters=hp, seed=seed, spec={"checkpoint": ck.uri, "seed": seed}))
    return run_id, out


def _sweep(s, name: str = "sw", **kw):
    run_id, jobs = _make_jobs(s, **kw)
    sweep = ss.create_sweep(s, name=name, config={"sweep": name}, submitted_by="alice", training_run_id=run_id)
    outcome = sj.add_jobs(s, sweep_id=sweep.id, jobs=jobs)
    return sweep, jobs, outcome


def _record(s, job_id: int, owner: str | None, result: dict, diverged: bool = False) -> None:
    """One result through the one write path; a refusal raises like the scheduler's log says."""
    out = sr.record_results(s, owner=owner, results=[NewResult(job_id=job_id, result=result, diverged=diverged)])
    if out.refused:
        raise JobStateError(out.refused[job_id])


def _result_row(s, job_id: int) -> Result:
    return s.scalars(select(Result).where(Result.job_id == job_id)).one()


RESULT = {"llc_mean": 12.5, "llc_std": 0.5, "llc_per_chain": [12.0, 13.0], "init_loss": 2.25, "baseline_loss": 2.0,
          "nbeta": 14.4, "n": 64, "num_draws": 100, "num_chains": 2, "diagnostics": {"rhat": 1.01, "ess": float("nan")},
          "wall_time_s": 3.5, "device": "cpu", "host": "node-7", "loss_wstar": 2.125}


def test_add_jobs_creates_links_and_shares_keys_across_sweeps(store_url: str) -> None:
    with session_scope(store_url) as s:
        a, jobs, out_a = _sweep(s, "a")
        assert (out_a.new, out_a.already_done, out_a.already_queued, out_a.total) == (6, 0, 0, 6)
        assert a.status == "submitted" and a.submitter_kind == "person"
        assert ss.sweep_counts(s, sweep_id=a.id)["pending"] == 6
        claimed = sj.claim_jobs(s, owner="w", limit=1, lease_seconds=60)
        _record(s, claimed[0].id, "w", RESULT, False)
        b = ss.create_sweep(s, name="b", config={}, submitted_by="schedule:nightly", training_run_id=None)
        out_b = sj.add_jobs(s, sweep_id=b.id, jobs=jobs + jobs[:1])  # a duplicate key in the same submission
        assert (out_b.new, out_b.already_done, out_b.already_queued) == (0, 1, 6)
        b = ss.get_sweep(s, sweep_id=b.id)
        assert b.submitter_kind == "schedule" and b.status == "running"
        assert s.query(Job).count() == 6
        rows_b = {r.job_id: r for r in sr.sweep_results(s, sweep_id=b.id)}
        assert rows_b[claimed[0].id].llc_mean == 12.5 and rows_b[claimed[0].id].status == "succeeded"
        assert [r.step for r in sr.sweep_results(s, sweep_id=a.id)] == [0, 0, 100, 100, 200, 200]


def test_claim_sets_lease_attempts_and_sweep_running(store_url: str) -> None:
    with session_scope(store_url) as s:
        sweep, _, _ = _sweep(s)
        sid = sweep.id
    with session_scope(store_url) as s:
        before = datetime.now(timezone.utc)
        got = sj.claim_jobs(s, owner="sched-1", limit=4, lease_seconds=120)
        assert len(got) == 4 and [j.id for j in got] == sorted(j.id for j in got)
        for j in got:
            assert j.status == "running" and j.attempts == 1 and j.lease_owner == "sched-1"
            assert j.lease_expires_at is not None and j.lease_expires_at.tzinfo is not None
            assert before + timedelta(seconds=119) < j.lease_expires_at < before + timedelta(seconds=200)
        assert ss.get_sweep(s, sweep_id=sid).status == "running"
        assert len(sj.claim_jobs(s, owner="sched-2", limit=10, lease_seconds=120)) == 2
        assert sj.claim_jobs(s, owner="sched-2", limit=10, lease_seconds=120) == []


def _claim_all(url: str, owner: str, out: dict[str, list[int]], errors: list[BaseException], barrier: threading.Barrier) -> None:
    try:
        barrier.wait()
        while True:
            with session_scope(url) as s:
                got = sj.claim_jobs(s, owner=owner, limit=3, lease_seconds=60)
                ids = [j.id for j in got]
            if not ids:
                return
            out[owner].extend(ids)
    except BaseException as exc:  # surfaced by the test
        errors.append(exc)


def test_concurrent_claimers_never_get_the_same_job(store_url: str) -> None:
    with session_scope(store_url) as s:
        _sweep(s, n_steps=15, seeds=(0, 1, 2))  # 45 jobs
    owners = [f"claimer-{i}" for i in range(4)]
    out: dict[str, list[int]] = {o: [] for o in owners}
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(owners))
    threads = [threading.Thread(target=_claim_all, args=(store_url, o, out, errors, barrier)) for o in owners]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    claimed = [i for ids in out.values() for i in ids]
    assert len(claimed) == len(set(claimed)) == 45
    with session_scope(store_url) as s:
        by_owner = {o: sorted(j.id for j in s.query(Job).filter(Job.lease_owner == o)) for o in owners}
        assert by_owner == {o: sorted(ids) for o, ids in out.items()}
        assert {j.attempts for j in s.query(Job)} == {1}


def _expire(url: str, job_ids: list[int]) -> None:
    with session_scope(url) as s:
        s.execute(update(Job).where(Job.id.in_(job_ids)).values(lease_expires_at=datetime.now(timezone.utc) - timedelta(seconds=1)))


def test_expired_leases_return_to_pending_then_fail_after_max_attempts(store_url: str) -> None:
    with session_scope(store_url) as s:
        sweep, _, _ = _sweep(s, n_steps=1, seeds=(0, 1))
        sid = sweep.id
    with session_scope(store_url) as s:
        ids = [j.id for j in sj.claim_jobs(s, owner="dead", limit=2, lease_seconds=60)]
    with session_scope(store_url) as s:
        assert sj.release_expired_leases(s, max_attempts=2) == 0  # leases still valid
    _expire(store_url, ids[:1])
    with session_scope(store_url) as s:
        assert sj.release_expired_leases(s, max_attempts=2) == 1
        job = sj.get_job(s, job_id=ids[0])
        assert (job.status, job.attempts, job.lease_owner) == ("pending", 1, None)
        assert "lease expired" in (job.error or "")
        assert sj.renew_leases(s, owner="dead", job_ids=ids, lease_seconds=60) == 1  # only the one it still holds
        again = sj.claim_jobs(s, owner="alive", limit=5, lease_seconds=60)
        assert [j.id for j in again] == ids[:1] and again[0].attempts == 2
    with pytest.raises(JobStateError, match="no longer holds its lease"):
        with session_scope(store_url) as s:
            _record(s, ids[0], "dead", RESULT, False)
    _expire(store_url, ids[:1])
    with session_scope(store_url) as s:
        assert sj.release_expired_leases(s, max_attempts=2) == 1
        job = sj.get_job(s, job_id=ids[0])
        assert job.status == "failed" and "gave up" in (job.error or "")
        assert ss.sweep_counts(s, sweep_id=sid)["failed"] == 1


def test_results_for_unknown_finished_or_foreign_jobs_are_refused(store_url: str) -> None:
    with session_scope(store_url) as s:
        _sweep(s, n_steps=1, seeds=(0, 1))
        a, b = sj.claim_jobs(s, owner="w", limit=2, lease_seconds=60)
        _record(s, a.id, "w", RESULT, False)
        res = _result_row(s, a.id)
        assert (res.llc_mean, res.num_draws, res.num_chains, res.device, res.loss_wstar) == (12.5, 100, 2, "cpu", 2.125)
        assert res.diagnostics == {"rhat": 1.01, "ess": None} and res.payload["host"] == "node-7"
        a = sj.get_job(s, job_id=a.id)
        assert a.worker_host == "node-7" and a.status == "succeeded"
        aid, bid = a.id, b.id
    for job_id, owner, pattern in [(999_999, None, "no such job"), (aid, None, "already succeeded"), (aid, "w", "already succeeded"),
                                   (bid, "intruder", "intruder no longer holds")]:
        with pytest.raises(JobStateError, match=pattern):
            with session_scope(store_url) as s:
                _record(s, job_id, owner, {"llc_mean": -1.0}, False)
    with pytest.raises(JobStateError, match="already succeeded"):
        with session_scope(store_url) as s:
            sj.record_failure(s, job_id=aid, owner=None, error="late", retry=False)
    with session_scope(store_url) as s:
        assert [r.llc_mean for r in s.query(Result)] == [12.5]
        assert sj.get_job(s, job_id=bid).status == "running"


def test_diverged_is_final_and_failures_retry_until_attempts_run_out(store_url: str) -> None:
    with session_scope(store_url) as s:
        sweep, jobs, _ = _sweep(s, n_steps=1, seeds=(0, 1))
        sid = sweep.id
        a, b = sj.claim_jobs(s, owner="w", limit=2, lease_seconds=60)
        _record(s, a.id, "w", {"llc_mean": math.nan, "llc_per_chain": [math.inf, 1.0]}, True)
        res = _result_row(s, a.id)
        assert res.diverged and res.llc_mean is None and res.llc_per_chain == [None, 1.0]
        assert sj.get_job(s, job_id=a.id).status == "diverged"
        assert sj.record_failure(s, job_id=b.id, owner="w", error="CUDA OOM", retry=True, max_attempts=2).status == "pending"
        b = sj.get_job(s, job_id=b.id)
        assert (b.status, b.error) == ("pending", "CUDA OOM")
        (b2,) = sj.claim_jobs(s, owner="w", limit=1, lease_seconds=60)
        assert b2.attempts == 2
        failed = sj.record_failure(s, job_id=b2.id, owner="w", error="CUDA OOM again", retry=True, max_attempts=2)
        assert failed.status == "failed" and failed.finished_sweeps == (sid,)
        b2 = sj.get_job(s, job_id=b2.id)
        assert b2.status == "failed" and b2.finished_at is not None
        assert ss.get_sweep(s, sweep_id=sid).status == "finished" and ss.sweep_is_finished(s, sweep_id=sid)
        # A new sweep asking for the same keys reuses the diverged one and retries the failed one.
        again = ss.create_sweep(s, name="again", config={}, submitted_by="bob", training_run_id=None)
        out = sj.add_jobs(s, sweep_id=again.id, jobs=jobs)
        assert (out.new, out.requeued, out.already_done, out.already_queued) == (1, 1, 1, 0)
        b2 = sj.get_job(s, job_id=b2.id)
        assert b2.status == "pending" and b2.attempts == 0 and b2.error is None


def test_cancel_keeps_jobs_another_active_sweep_needs(store_url: str) -> None:
    with session_scope(store_url) as s:
        a, jobs, _ = _sweep(s, "a", n_steps=2, seeds=(0,))
        b = ss.create_sweep(s, name="b", config={}, submitted_by="bob", training_run_id=None)
        sj.add_jobs(s, sweep_id=b.id, jobs=jobs[:1])
        running = sj.claim_jobs(s, owner="w", limit=2, lease_seconds=60)
        assert len(running) == 2
        _, extra, _ = _sweep(s, "c", n_steps=1, seeds=(5,), run="s3://b/other")
        only_a = ss.create_sweep(s, name="a2", config={}, submitted_by="alice", training_run_id=None)
        sj.add_jobs(s, sweep_id=only_a.id, jobs=extra)
        ids = (a.id, b.id, only_a.id, running[0].id, running[1].id)
    with session_scope(store_url) as s:
        a_id, b_id, a2_id, shared_id, own_id = ids
        assert ss.cancel_sweep(s, sweep_id=a_id) == [own_id]  # the shared running job is still needed by b
        assert ss.get_sweep(s, sweep_id=a_id).status == "cancelled" and ss.sweep_is_finished(s, sweep_id=a_id)
        assert sj.get_job(s, job_id=shared_id).status == "running"
        assert ss.cancel_sweep(s, sweep_id=b_id) == [shared_id]
        with pytest.raises(JobStateError, match="already cancelled"):
            _record(s, own_id, "w", RESULT, False)
        assert ss.sweep_counts(s, sweep_id=a2_id)["pending"] == 1  # untouched
        with pytest.raises(JobStateError, match="is cancelled"):
            sj.add_jobs(s, sweep_id=a_id, jobs=jobs)


def test_graceful_release_does_not_count_the_attempt(store_url: str) -> None:
    with session_scope(store_url) as s:
        _sweep(s, n_steps=1, seeds=(0, 1))
        sj.claim_jobs(s, owner="me", limit=1, lease_seconds=60)
        sj.claim_jobs(s, owner="other", limit=1, lease_seconds=60)
        assert sj.release_owner_jobs(s, owner="me") == 1
        states = sorted((j.status, j.attempts, j.lease_owner) for j in s.query(Job))
        assert states == [("pending", 0, None), ("running", 1, "other")]


def test_handing_back_some_jobs_releases_only_those_of_that_owner(store_url: str) -> None:
    with session_scope(store_url) as s:
        _sweep(s, n_steps=1, seeds=(0, 1, 2))
        mine = [j.id for j in sj.claim_jobs(s, owner="me", limit=2, lease_seconds=60)]
        (theirs,) = [j.id for j in sj.claim_jobs(s, owner="other", limit=1, lease_seconds=60)]
        assert sj.release_owner_jobs(s, owner="me", job_ids=[mine[0], theirs]) == 1   # not another's job
        states = {j.id: (j.status, j.attempts, j.lease_owner) for j in s.query(Job)}
        assert states == {mine[0]: ("pending", 0, None), mine[1]: ("running", 1, "me"), theirs: ("running", 1, "other")}


def test_sweep_lifecycle_and_mlflow_ids(store_url: str) -> None:
    with session_scope(store_url) as s:
        sweep, _, _ = _sweep(s, n_steps=1, seeds=(0,))
        ss.set_sweep_mlflow_run(s, sweep_id=sweep.id, run_id="parent123")
        (job,) = sj.claim_jobs(s, owner="w", limit=1, lease_seconds=60)
        sj.set_job_mlflow_run(s, job_id=job.id, run_id="child456")
        assert not ss.sweep_is_finished(s, sweep_id=sweep.id)
        _record(s, job.id, None, RESULT, False)
        sid = sweep.id
    with session_scope(store_url) as s:
        sweep = ss.get_sweep(s, sweep_id=sid)
        assert (sweep.status, sweep.mlflow_run_id) == ("finished", "parent123") and sweep.finished_at is not None
        (row,) = sr.sweep_results(s, sweep_id=sid)
        assert (row.mlflow_run_id, row.llc_per_chain, row.init_loss, row.baseline_loss) == ("child456", [12.0, 13.0], 2.25, 2.0)
        assert (row.loss_wstar, row.loss_at_wstar, row.worker_host, row.num_draws) == (2.125, 2.125, "node-7", 100)
        assert [x.id for x in ss.list_sweeps(s)] == [sid]
        with pytest.raises(NotFound, match="no sweep with id 4242") as info:
            ss.get_sweep(s, sweep_id=4242)
        assert isinstance(info.value, LookupError)
        with pytest.raises(NotFound, match="4242"):
            ss.set_sweep_mlflow_run(s, sweep_id=4242, run_id="x")


def test_checkpoints_are_keyed_by_content(store_url: str) -> None:
    with session_scope(store_url) as s:
        tr = ss.upsert_training_run(s, uri="s3://b/run")
        one = ss.upsert_checkpoint(s, training_run_id=tr, step=10, uri="s3://b/run/step-10", fingerprint="aaa")
        assert ss.upsert_checkpoint(s, training_run_id=tr, step=10, uri="s3://b/run/step-10", fingerprint="aaa").id == one.id
        rewritten = ss.upsert_checkpoint(s, training_run_id=tr, step=10, uri="s3://b/run/step-10", fingerprint="bbb")
        assert rewritten.id != one.id
        with pytest.raises(ValueError, match="already stored as step 10"):
            ss.upsert_checkpoint(s, training_run_id=tr, step=20, uri="s3://b/run/step-10", fingerprint="aaa")


def test_replace_stages_never_duplicates(store_url: str) -> None:
    with session_scope(store_url) as s:
        sweep, _, _ = _sweep(s, n_steps=1, seeds=(0,))
        stages = [StageRow(hyperparameters={"lr": 1e-4}, start_step=0, end_step=300, kind="B", llc_change=-2.0, loss_change=0.0),
                  StageRow(hyperparameters={"lr": 1e-4}, start_step=300, end_step=900, kind="A", llc_change=5.0, loss_change=-1.5),
                  StageRow(hyperparameters={"lr": 1e-3}, start_step=0, end_step=900, kind="A", llc_change=4.0, loss_change=-1.0),
                  StageRow(hyperparameters={"lr": 1e-3}, start_step=900, end_step=2000, kind="other", llc_change=3.0, loss_change=0.5)]
        sst.replace_stages(s, sweep_id=sweep.id, stages=stages)
        sst.replace_stages(s, sweep_id=sweep.id, stages=stages)
        got = sst.list_stages(s, sweep_id=sweep.id)
        assert len(got) == 4 == s.query(Stage).count()
        assert sorted((g.hyperparameters["lr"], g.start_step, g.kind) for g in got) == [
            (1e-4, 0, "B"), (1e-4, 300, "A"), (1e-3, 0, "A"), (1e-3, 900, "other")]
        with pytest.raises(ValueError, match="not 'A', 'B' or 'other'"):
            sst.replace_stages(s, sweep_id=sweep.id, stages=[StageRow(hyperparameters={}, start_step=0, end_step=1, kind="C")])
        assert len(sst.list_stages(s, sweep_id=sweep.id)) == 4


def _claim_in_process(url: str, owner: str, queue) -> None:  # type: ignore[no-untyped-def]
    ids: list[int] = []
    while True:
        with session_scope(url) as s:
            got = [j.id for j in sj.claim_jobs(s, owner=owner, limit=2, lease_seconds=60)]
        if not got:
            break
        ids.extend(got)
    queue.put(ids)


def test_concurrent_claimer_processes_never_get_the_same_job(store_url: str) -> None:
    import multiprocessing

    with session_scope(store_url) as s:
        _sweep(s, n_steps=10, seeds=(0, 1))  # 20 jobs
    from services.store.db import dispose_engines

    dispose_engines()  # children must not share the parent's connections
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_claim_in_process, args=(store_url, f"proc-{i}", queue)) for i in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    claimed = [i for ids in results for i in ids]
    assert len(claimed) == len(set(claimed)) == 20


def test_claim_within_one_sweep(store_url: str) -> None:
    with session_scope(store_url) as s:
        _sweep(s, "first", n_steps=2, seeds=(0,))
        second, _, _ = _sweep(s, "second", n_steps=1, seeds=(0,), run="s3://b/run2")
        got = sj.claim_jobs(s, owner="w", limit=10, lease_seconds=60, sweep_id=second.id)
        assert [j.checkpoint_uri for j in got] == ["s3://b/run2/step-0"]
        assert ss.get_sweep(s, sweep_id=second.id).status == "running"
        assert sj.claim_jobs(s, owner="w", limit=10, lease_seconds=60, sweep_id=second.id) == []


def test_estimator_output_fills_columns_and_traces_stay_out_of_the_payload(store_url: str) -> None:
    import numpy as np

    with session_scope(store_url) as s:
        _sweep(s, n_steps=1, seeds=(0,))
        (job,) = sj.claim_jobs(s, owner="w", limit=1, lease_seconds=60)
        out = {"llc_mean": np.float32(7.5), "llc_std": 0.25, "llc_per_chain": np.array([7.25, 7.75, 7.5]),
               "init_loss": 1.5, "baseline_loss": 1.25, "nbeta": 20.0, "n": 512, "diverged": False, "num_chains": 3,
               "num_draws": 400, "loss_trace": np.ones((3, 400)), "chain_diverged": [False, False, False],
               "diagnostics": {"r_hat": np.float64(1.02), "ess": float("nan")}, "device": "cuda:0",
               "wall_time_s": np.float64(9.0), "loss_wstar": None}
        _record(s, job.id, "w", out, False)
        res = _result_row(s, job.id)
        assert (res.llc_mean, res.llc_per_chain, res.num_chains, res.num_draws, res.wall_time_s) == (7.5, [7.25, 7.75, 7.5], 3, 400, 9.0)
        assert res.diagnostics == {"r_hat": 1.02, "ess": None} and res.loss_wstar is None
        assert res.payload["loss_trace"] == {"omitted": "1200 values (traces are logged to MLflow)"}
        assert res.payload["chain_diverged"] == [False, False, False] and res.payload["n"] == 512


def test_record_results_stores_a_batch(store_url: str) -> None:
    with session_scope(store_url) as s:
        sweep, _, _ = _sweep(s, n_steps=2, seeds=(0, 1))
        sid = sweep.id
        a, b, c, d = sj.claim_jobs(s, owner="w", limit=4, lease_seconds=60)
        ids = (a.id, b.id, c.id, d.id)
        out = sr.record_results(s, owner="w", results=[
            NewResult(job_id=a.id, result=RESULT, diverged=False),
            NewResult(job_id=b.id, result={"llc_mean": math.nan, "llc_per_chain": [math.inf, 1.0]}, diverged=True,
                           mlflow_run_id="run-b"),
            NewResult(job_id=c.id, result={"llc_mean": 7.0, "host": "node-9"}, diverged=False)])
        assert out.stored == (a.id, b.id, c.id) and out.refused == {} and out.finished_sweeps == ()
        a, b, c = (sj.get_job(s, job_id=j.id) for j in (a, b, c))
        assert (a.status, a.worker_host, a.lease_owner) == ("succeeded", "node-7", None) and a.finished_at is not None
        assert (b.status, b.mlflow_run_id) == ("diverged", "run-b") and c.worker_host == "node-9"
        assert ss.get_sweep(s, sweep_id=sid).status == "running"
        out = sr.record_results(s, owner="w", results=[NewResult(job_id=d.id, result=RESULT, diverged=False)])
        assert out.stored == (d.id,) and out.finished_sweeps == (sid,)
        assert ss.get_sweep(s, sweep_id=sid).status == "finished"
    with session_scope(store_url) as s:
        rows = {r.job_id: r for r in s.query(Result)}
        ra, rb, rc = rows[ids[0]], rows[ids[1]], rows[ids[2]]
        assert (ra.llc_mean, ra.num_draws, ra.num_chains, ra.device, ra.wall_time_s) == (12.5, 100, 2, "cpu", 3.5)
        assert ra.diagnostics == {"rhat": 1.01, "ess": None} and ra.payload["host"] == "node-7"
        assert rb.diverged and rb.llc_mean is None and rb.llc_per_chain == [None, 1.0]
        assert rb.diagnostics is None and rb.device is None
        assert rc.llc_mean == 7.0 and not rc.diverged
        assert {r.job_id: r.status for r in sr.sweep_results(s, sweep_id=sid)} == {
            ids[0]: "succeeded", ids[1]: "diverged", ids[2]: "succeeded", ids[3]: "succeeded"}


def test_record_results_refuses_per_job(store_url: str) -> None:
    with session_scope(store_url) as s:
        _sweep(s, n_steps=2, seeds=(0, 1))
        a, b, c = sj.claim_jobs(s, owner="w", limit=3, lease_seconds=60)
        (pending,) = sj.claim_jobs(s, owner="other", limit=1, lease_seconds=60)
        s.execute(update(Job).where(Job.id == pending.id).values(status="pending", lease_owner=None))
        _record(s, a.id, "w", RESULT, False)
        s.execute(update(Job).where(Job.id == b.id).values(status="cancelled", lease_owner=None))
        aid, bid, pid = a.id, b.id, pending.id
    with session_scope(store_url) as s:
        out = sr.record_results(s, owner="w", results=[
            NewResult(job_id=999_999, result=RESULT, diverged=False),
            NewResult(job_id=aid, result={"llc_mean": -1.0}, diverged=False),
            NewResult(job_id=bid, result={"llc_mean": -1.0}, diverged=False),
            NewResult(job_id=pid, result={"llc_mean": -1.0}, diverged=False)])
        assert out.stored == ()
        assert "no such job" in out.refused[999_999] and "already succeeded" in out.refused[aid]
        assert "already cancelled" in out.refused[bid] and "w no longer holds" in out.refused[pid]
        assert "it is pending, not claimed" in out.refused[pid]
    with session_scope(store_url) as s:
        assert [r.llc_mean for r in s.query(Result)] == [12.5]


def test_record_results_stores_the_held_and_refuses_the_rest(store_url: str) -> None:
    with session_scope(store_url) as s:
        _sweep(s, n_steps=2, seeds=(0, 1))
        a, b, c = sj.claim_jobs(s, owner="w", limit=3, lease_seconds=60)
        s.execute(update(Job).where(Job.id == c.id).values(lease_owner="thief"))
        _record(s, b.id, "w", RESULT, False)
        aid, bid, cid = a.id, b.id, c.id
    with session_scope(store_url) as s:
        out = sr.record_results(s, owner="w", results=[
            NewResult(job_id=cid, result={"llc_mean": 1.0}, diverged=False),
            NewResult(job_id=aid, result={"llc_mean": 2.0}, diverged=False),
            NewResult(job_id=bid, result={"llc_mean": 3.0}, diverged=False),
            NewResult(job_id=aid, result={"llc_mean": 4.0}, diverged=False)])
        assert out.stored == (aid,)
        assert set(out.refused) == {cid, bid, aid}
        assert "w no longer holds" in out.refused[cid] and "held by thief" in out.refused[cid]
        assert "already succeeded" in out.refused[bid]
        assert "given twice" in out.refused[aid]
    with session_scope(store_url) as s:
        assert sorted(r.llc_mean for r in s.query(Result)) == [2.0, 12.5]
        assert sj.get_job(s, job_id=cid).status == "running" and sj.get_job(s, job_id=aid).status == "succeeded"
    with session_scope(store_url) as s:
        assert sr.record_results(s, owner=None, results=[]).stored == ()


def test_status_reads_are_bounded_to_the_latest_steps_first_failures_and_distinct_notes(store_url: str) -> None:
    """`llc status SWEEP` reads only what it shows: the latest steps with results, the first
    failures, each waiting note once (a 100k-job sweep must not load 100k rows)."""
    from rich.console import Console

    from services.sweeps import views

    with session_scope(store_url) as s:
        sweep, jobs, _ = _sweep(s, "bounded", n_steps=5)     # steps 0..400, seeds 0 and 1
        claimed = sj.claim_jobs(s, owner="w", limit=10, lease_seconds=60)
        by = {(c.step, c.seed): c.id for c in claimed}
        for step in (0, 100, 300):
            _record(s, by[(step, 0)], "w", RESULT, False)
        sj.record_failure(s, job_id=by[(200, 0)], owner="w", error="checkpoint step-200 is corrupt", retry=False)
        sj.record_failure(s, job_id=by[(200, 1)], owner="w", error="checkpoint step-200 is corrupt", retry=False)
        sj.note_jobs(s, owner="w", notes={by[(400, 0)]: "no node has 99 GPUs", by[(400, 1)]: "no node has 99 GPUs",
                                          by[(300, 1)]: "S3 unreachable; retrying"})

        assert sr.latest_result_steps(s, sweep_id=sweep.id, count=2) == [100, 300]
        assert sr.latest_result_steps(s, sweep_id=sweep.id, count=10) == [0, 100, 300]
        assert sr.result_step_count(s, sweep_id=sweep.id) == 3
        assert sr.waiting_notes(s, sweep_id=sweep.id, statuses=["pending", "running"]) == [
            "S3 unreachable; retrying", "no node has 99 GPUs"]
        first = sr.sweep_results(s, sweep_id=sweep.id, statuses=["failed"], limit=1)
        assert [(r.step, r.status) for r in first] == [(200, "failed")]
        done = sr.sweep_results(s, sweep_id=sweep.id, steps=[100, 300], statuses=["succeeded"])
        assert [(r.step, r.seed, r.llc_mean) for r in done] == [(100, 0, 12.5), (300, 0, 12.5)]

        detail = views.read_detail(s, sweep_id=sweep.id)
        assert [r.step for r in detail.done] == [0, 100, 300] and detail.steps_with_results == 3
        assert len(detail.failures) == 2 and detail.counts["failed"] == 2
        console = Console(width=200, record=True)
        console.print(views.sweep_detail(detail))
        text = console.export_text()
        assert "failures (2)" in text and "checkpoint step-200 is corrupt" in text
        assert text.count("waiting: no node has 99 GPUs") == 1
        assert "12.5±0.5" in text and "latest" not in text


def test_status_detail_says_how_many_steps_it_left_out(store_url: str) -> None:
    from rich.console import Console

    from services.sweeps import views

    with session_scope(store_url) as s:
        sweep, _, _ = _sweep(s, "many", n_steps=15, seeds=(0,))
        for job in sj.claim_jobs(s, owner="w", limit=15, lease_seconds=60):
            _record(s, job.id, "w", RESULT, False)
        detail = views.read_detail(s, sweep_id=sweep.id)
        assert [r.step for r in detail.done] == [step * 100 for step in range(15 - views.STATUS_STEPS, 15)]
        console = Console(width=200, record=True)
        console.print(views.sweep_detail(detail))
        assert f"latest {views.STATUS_STEPS} of 15 steps" in " ".join(console.export_text().split())  # the title wraps
