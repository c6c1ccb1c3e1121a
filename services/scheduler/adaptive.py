"""Adaptive checkpoint density: after a pass, add checkpoints where the λ̂ curve needs them.

`sweep.checkpoints.adaptive: {initial: K, budget: B}` submits K log-spaced checkpoints of the
selection. Each time the sweep's jobs are all done, `refine_sweep` scores every gap between
estimated checkpoints that still holds unestimated ones: the larger of the λ̂ change across
the gap and how much the curve turns inside it (see _bend), in units of z × their noise,
doubled where a bootstrap stage boundary's 5–95 % interval reaches into the gap. It adds the
checkpoint nearest the middle (on log step) of the best gaps, halving a gap's score each
time it is split, `per_round` at a time, to the same sweep. It stops when B checkpoints were
added or no gap scores at least 1 (the curve and its boundaries are resolved between the
checkpoints it has). The state is the sweep itself (its config and which checkpoints it
has), so the scheduler, `llc run` and nightly sweeps all refine the same way, and a
scheduler that dies mid-way loses nothing. A refinement that fails (object store away, a bad
stored config) is logged and the sweep is aggregated as it is.
"""
from __future__ import annotations

import heapq
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from services.store import sweeps as store_sweeps
from services.store.db import session_scope
from services.store.entities import AddJobsOutcome
from services.store.results import sweep_results
from services.sweeps.schema import AdaptiveDensity, LLCConfig

if TYPE_CHECKING:
    from services.aggregator.curves import SettingCurve
    from services.sweeps.submit import SweepPlan

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RefineOutcome:
    sweep_id: int
    added_steps: tuple[int, ...] = ()
    new_jobs: int = 0            # jobs to run (new or requeued)
    reused_jobs: int = 0         # jobs already done for another sweep
    reason: str = ""             # why it stopped adding, when it added nothing

    @property
    def pending(self) -> bool:
        return self.new_jobs > 0


@dataclass(frozen=True)
class Gap:
    lo: int                       # estimated step on the left
    hi: int                       # estimated step on the right
    score: float


def gap_scores(curves: Sequence[SettingCurve], candidates: Sequence[int], *, z: float = 3.0,
               bootstrap_replicates: int = 30) -> list[Gap]:
    """Every gap between consecutive estimated checkpoints that holds a candidate step, scored
    (max over the settings): ≥ 1 means the curve is not resolved there."""
    # The aggregator package imports torch: here, not at module level, so the scheduler (which
    # imports this module) starts — and restarts after a crash — without paying for it.
    from services.aggregator.bootstrap import bootstrap_stages

    best: dict[tuple[int, int], float] = {}
    cand = np.asarray(sorted(candidates), dtype=float)
    for curve in curves:
        if len(curve.points) < 2:
            continue
        steps = np.asarray([p.step for p in curve.points], dtype=float)
        y = np.asarray([p.llc_mean for p in curve.points])
        sem = np.asarray([p.llc_sem for p in curve.points])
        noise = float(np.nanmedian(sem)) if np.isfinite(sem).any() else 0.0
        noise = max(noise, 1e-9 * max(1.0, float(np.nanmax(np.abs(y)))))
        unit = z * noise
        intervals = []
        if len(steps) >= 5:
            boot = bootstrap_stages(steps, [p.estimates or (p.llc_mean,) for p in curve.points], z=z,
                                    replicates=bootstrap_replicates)
            intervals = [(b.low, b.high) for b in boot.boundaries]
        x = np.log(steps + 1.0)
        for i in range(len(steps) - 1):
            a, b = steps[i], steps[i + 1]
            if not np.any((cand > a) & (cand < b)):
                continue
            score = max(abs(y[i + 1] - y[i]) / np.sqrt(2), _bend(x, y, i)) / unit
            if any(lo < b and hi > a for lo, hi in intervals):
                score = max(score, 1.0) * 2.0
            key = (int(a), int(b))
            best[key] = max(best.get(key, 0.0), float(score))
    return [Gap(lo, hi, s) for (lo, hi), s in best.items()]


def _bend(x: np.ndarray, y: np.ndarray, i: int) -> float:
    """How far the curve turns inside gap (i, i+1): the lines through the neighbouring pairs
    (i−1, i) and (i+1, i+2), continued across the gap, miss the far end by this much, divided
    by how much more noisy that extrapolation is than one point (so it compares with the
    noise of one point). The smaller of the two misses counts, so one long neighbouring gap
    alone is not a bend."""
    misses = []
    gap = x[i + 1] - x[i]
    if i >= 1:
        r = gap / max(x[i] - x[i - 1], 1e-12)
        slope = (y[i] - y[i - 1]) / max(x[i] - x[i - 1], 1e-12)
        misses.append(abs(y[i] + slope * gap - y[i + 1]) / np.sqrt((1 + r) ** 2 + r**2 + 1))
    if i + 2 < len(x):
        r = gap / max(x[i + 2] - x[i + 1], 1e-12)
        slope = (y[i + 2] - y[i + 1]) / max(x[i + 2] - x[i + 1], 1e-12)
        misses.append(abs(y[i + 1] - slope * gap - y[i]) / np.sqrt((1 + r) ** 2 + r**2 + 1))
    return float(min(misses)) if misses else 0.0


def choose_steps(gaps: Sequence[Gap], candidates: Sequence[int], count: int) -> list[int]:
    """Up to `count` candidate steps: the one nearest the log-middle of the best-scoring gap,
    then that gap's halves at half its score, and so on, while a gap scores at least 1."""
    cand = sorted(set(candidates))
    heap = [(-g.score, g.lo, g.hi) for g in gaps if g.score >= 1.0]
    heapq.heapify(heap)
    chosen: list[int] = []
    while heap and len(chosen) < count:
        neg, lo, hi = heapq.heappop(heap)
        inside = [c for c in cand if lo < c < hi and c not in chosen]
        if not inside:
            continue
        mid = math.exp((math.log(lo + 1) + math.log(hi + 1)) / 2) - 1
        pick = min(inside, key=lambda c: (abs(math.log(c + 1) - math.log(mid + 1)), c))
        chosen.append(pick)
        for a, b in ((lo, pick), (pick, hi)):
            if -neg / 2 >= 1.0:
                heapq.heappush(heap, (neg / 2, a, b))
    return sorted(chosen)


def round_size(adaptive: AdaptiveDensity) -> int:
    return adaptive.per_round or max(1, math.ceil(adaptive.budget / 3))


def refine_sweep(sweep_id: int, *, database_url: str, max_rounds: int = 100) -> RefineOutcome:
    """Add the next round of checkpoints to an adaptive sweep whose jobs are done. Rounds whose
    jobs are all already done (another sweep ran them) are linked and the next round chosen at
    once, so the outcome has jobs to run, or says why the sweep is complete."""
    from omegaconf import OmegaConf

    from services.aggregator.curves import build_curves
    from services.sweeps.submit import plan_sweep

    with session_scope(database_url) as s:
        sweep = store_sweeps.get_sweep(s, sweep_id=sweep_id)
        stored = dict(sweep.config or {})
        status = str(sweep.status)
    try:
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(LLCConfig), stored))
    except Exception as exc:  # an old or foreign config: nothing adaptive to do
        return RefineOutcome(sweep_id, reason=f"config not readable ({exc})")
    assert isinstance(cfg, LLCConfig)
    adaptive = cfg.sweep.checkpoints.adaptive
    if not adaptive.enabled:
        return RefineOutcome(sweep_id, reason="not adaptive")
    if status == "cancelled":
        return RefineOutcome(sweep_id, reason="cancelled")
    full = replace(cfg, sweep=replace(cfg.sweep, checkpoints=replace(cfg.sweep.checkpoints,
                                                                     adaptive=AdaptiveDensity())))
    plan = plan_sweep(full)              # every selectable checkpoint and its jobs
    added: list[int] = []
    reused = 0
    for _ in range(max_rounds):
        with session_scope(database_url) as s:
            rows = sweep_results(s, sweep_id=sweep_id)
        have = {int(r.step) for r in rows}
        left = int(adaptive.initial or 0) + adaptive.budget - len(have)
        if left <= 0:
            return RefineOutcome(sweep_id, tuple(added), 0, reused, reason="budget spent")
        if any(r.status in ("pending", "running") for r in rows):
            return RefineOutcome(sweep_id, tuple(added), 0, reused, reason="jobs still running")
        candidates = [c.step for c in plan.checkpoints if c.step not in have]
        curves, _ = build_curves(rows)
        steps = choose_steps(gap_scores(curves, candidates), candidates, min(left, round_size(adaptive)))
        if not steps:
            return RefineOutcome(sweep_id, tuple(added), 0, reused, reason="resolved")
        outcome = _add_checkpoints(plan, steps, sweep_id=sweep_id, database_url=database_url)
        added += steps
        reused += outcome.already_done
        if outcome.new or outcome.already_queued:
            log.info("sweep %s: adaptive density added steps %s (%d jobs)", sweep_id, steps, outcome.new)
            return RefineOutcome(sweep_id, tuple(added), outcome.new + outcome.already_queued, reused)
    return RefineOutcome(sweep_id, tuple(added), 0, reused, reason="round limit")


def _add_checkpoints(plan: SweepPlan, steps: Sequence[int], *, sweep_id: int, database_url: str
                     ) -> AddJobsOutcome:
    from services.sweeps.submit import link_jobs

    wanted = set(steps)
    with session_scope(database_url) as s:
        run_id = store_sweeps.upsert_training_run(s, uri=plan.run_uri)
        return link_jobs(s, sweep_id=sweep_id, run_id=run_id,
                         checkpoints=[c for c in plan.checkpoints if c.step in wanted],
                         jobs=[j for j in plan.jobs if j.checkpoint.step in wanted])


def refine_adaptive(sweep_id: int, *, database_url: str) -> bool:
    """True when checkpoints were added and their jobs now wait to run."""
    try:
        outcome = refine_sweep(sweep_id, database_url=database_url)
    except Exception as exc:
        log.warning("Adaptive refinement of sweep %s failed (%s); aggregating what it has.", sweep_id,
                    " ".join(str(exc).split())[:300])
        return False
    if outcome.added_steps:
        log.info("sweep %s: adaptive density added steps %s (%d jobs to run, %d reused)", sweep_id,
                 list(outcome.added_steps), outcome.new_jobs, outcome.reused_jobs)
    return outcome.pending
