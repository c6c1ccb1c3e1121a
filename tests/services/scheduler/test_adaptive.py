"""Adaptive checkpoint density: the first pass, where it adds checkpoints, and when it stops —
on real Postgres and moto S3 (results recorded through the store, as a worker would)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

from services.aggregator.curves import CheckpointPoint, SettingCurve
from services.store.db import session_scope
from services.store.entities import NewResult
from services.store.jobs import claim_jobs
from services.store.results import record_results, sweep_results
from services.store.sweeps import get_sweep
from services.scheduler.adaptive import Gap, choose_steps, gap_scores, refine_sweep
from services.sweeps.config import ConfigError, load_config
from services.sweeps.schema import AdaptiveDensity, CheckpointSelection
from services.sweeps.selection import log_spaced, select_checkpoints
from services.sweeps.submit import submit_sweep
from tests.services.sweeps.tiny_runs import TINY, tiny_overrides, tiny_run

STEPS = [0, 1, 2, 3, 5, 8, 12, 18, 27, 40, 60, 90, 135, 200, 300, 450, 675, 1000]


@dataclass(frozen=True)
class Ref:
    step: int


def _curve(steps: list[int], f, sd: float = 0.5) -> SettingCurve:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    pts = []
    for st in steps:
        est = tuple(float(v) for v in f(st) + rng.normal(0, sd, 4))
        m, s = float(np.mean(est)), float(np.std(est, ddof=1))
        pts.append(CheckpointPoint(st, f"u{st}", m, s, s / 2, 4, 1, None, None, est))
    return SettingCurve("k", "eps=0.001", {"epsilon": 1e-3}, tuple(pts), {"succeeded": len(pts)})


def _rise(step: int) -> float:
    """λ̂ jumps from 20 to 100 between steps ~100 and ~300."""
    return 20 + 80 / (1 + math.exp(-(math.log(step + 1) - math.log(170)) * 6))


def test_first_pass_is_log_spaced_with_both_ends() -> None:
    refs = [Ref(s) for s in STEPS]
    picked = [r.step for r in log_spaced(refs, 5)]
    assert len(picked) == 5 and picked[0] == 0 and picked[-1] == 1000
    assert picked == [r.step for r in log_spaced(refs, 5)]
    sel = CheckpointSelection(adaptive=AdaptiveDensity(initial=5, budget=3))
    assert [r.step for r in select_checkpoints(refs, sel, run_uri="s3://b/r")] == picked
    assert len(select_checkpoints(refs, CheckpointSelection(), run_uri="s3://b/r")) == len(STEPS)


def test_checkpoints_go_where_the_curve_rises_and_none_to_a_flat_one() -> None:
    have = [0, 5, 40, 1000]
    candidates = [s for s in STEPS if s not in have]
    steps = choose_steps(gap_scores([_curve(have, _rise)], candidates), candidates, 3)
    assert steps and all(40 < s < 1000 for s in steps), steps       # all inside the gap where λ̂ jumps
    flat = choose_steps(gap_scores([_curve(have, lambda s: 20.0)], candidates), candidates, 3)
    assert flat == []                                              # resolved: nothing to add
    # A split gap goes on at half its score, so a strong gap gets several picks, nearest the middle first.
    assert choose_steps([Gap(40, 1000, 8.0)], candidates, 1) == [200]
    assert choose_steps([Gap(40, 1000, 8.0)], candidates, 3) == [90, 200, 450]
    assert choose_steps([Gap(40, 1000, 1.5)], candidates, 3) == [200]           # halves score < 1: resolved


def test_bad_adaptive_settings_are_refused() -> None:
    with pytest.raises(ConfigError, match="adaptive.initial must be at least 2"):
        load_config(["sweep=demo", "sweep.checkpoints.adaptive.initial=1"])
    with pytest.raises(ConfigError, match="adaptive.budget must not be negative"):
        load_config(["sweep=demo", "sweep.checkpoints.adaptive={initial: 4, budget: -1}"])


def _record(db: str, sweep_id: int, f) -> int:  # type: ignore[no-untyped-def]
    """Finish every pending job of the sweep with λ̂ = f(step) ± a little, as a worker would."""
    done = 0
    with session_scope(db) as s:
        for job in claim_jobs(s, owner="tests", limit=1000, lease_seconds=600, sweep_id=sweep_id):
            values = [f(job.step) + d for d in (-0.2, 0.2)]
            record_results(s, owner="tests", results=[NewResult(job_id=job.id, diverged=False, result={
                "llc_mean": float(np.mean(values)), "llc_std": 0.28, "llc_per_chain": values, "init_loss": 3.0})])
            done += 1
    return done


def test_refinement_adds_checkpoints_in_the_rise_until_the_budget(storage: str, db: str, s3_endpoint: str) -> None:
    settings = TINY.__class__(**{**TINY.__dict__, "steps": 1000, "num_checkpoints": 18})
    storage, run_uri = tiny_run(s3_endpoint, name="adaptive-run", settings=settings)
    cfg = load_config(tiny_overrides(storage, run="adaptive-run", extra=(
        "sampler.epsilon=[1e-4]", "sweep.checkpoints.adaptive={initial: 4, budget: 4, per_round: 2}")))
    sub = submit_sweep(cfg, submitted_by="tester")
    assert sub.checkpoints == 4 and sub.new == 4
    # Jobs still pending: nothing is added yet.
    assert refine_sweep(sub.sweep_id, database_url=db).reason == "jobs still running"
    _record(db, sub.sweep_id, _rise)
    first = refine_sweep(sub.sweep_id, database_url=db)
    assert first.pending and len(first.added_steps) == 2 and first.new_jobs == 2
    with session_scope(db) as s:
        rows = sweep_results(s, sweep_id=sub.sweep_id)
        assert get_sweep(s, sweep_id=sub.sweep_id).status != "finished"   # running again
    before = sorted({r.step for r in rows if r.status == "succeeded"})
    for step in first.added_steps:   # each new checkpoint sits in a gap where λ̂ rises by more than the noise
        lo = max(s for s in before if s < step)
        hi = min(s for s in before if s > step)
        assert abs(_rise(hi) - _rise(lo)) > 3
    _record(db, sub.sweep_id, _rise)
    second = refine_sweep(sub.sweep_id, database_url=db)
    assert len(second.added_steps) == 2
    _record(db, sub.sweep_id, _rise)
    third = refine_sweep(sub.sweep_id, database_url=db)
    assert third.added_steps == () and third.reason == "budget spent"
    with session_scope(db) as s:
        rows = sweep_results(s, sweep_id=sub.sweep_id)
        assert len({r.step for r in rows}) == 8 and get_sweep(s, sweep_id=sub.sweep_id).status == "finished"
    # A second sweep of the same config reuses every finished job, round after round, and needs no run.
    again = submit_sweep(cfg, submitted_by="tester")
    assert again.new == 0
    reused = refine_sweep(again.sweep_id, database_url=db)
    assert reused.new_jobs == 0 and reused.reused_jobs == 4 and reused.reason == "budget spent"


def test_a_sweep_that_is_not_adaptive_is_left_alone(storage: str, db: str) -> None:
    sub = submit_sweep(load_config(tiny_overrides(storage)), submitted_by="tester")
    assert refine_sweep(sub.sweep_id, database_url=db).reason == "not adaptive"
