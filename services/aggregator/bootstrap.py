"""Stage detection with uncertainty: a bootstrap over chains, seeds and the smoothing.

Each replicate resamples, per checkpoint, its per-chain λ̂ estimates (chains × seeds) with
replacement, and multiplies the GCV smoothing parameter by a random factor (10^±0.5), then
runs the same detection. Every boundary of the reference detection gets the replicates'
nearest boundary in its own neighbourhood: their 5–95 % range is its interval and the share
of replicates that have one its presence. Each stage's type probability is the share of
replicates whose stage over the reference stage's middle has that type. A stage is reported
only when resolved (its boundaries present in most replicates and their intervals apart);
otherwise its weakest boundary is dropped and the stages are recomputed.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from services.aggregator.stages import (KIND_A, KIND_B, KIND_OTHER, DetectedStage, StageDetection, detect_stages,
                                        reference_lam, stages_between, to_step, to_x)

KINDS = (KIND_A, KIND_B, KIND_OTHER)


@dataclass(frozen=True)
class BoundaryInterval:
    step: int              # the reference detection's boundary
    low: int               # 5 % of the replicates' matching boundaries
    high: int              # 95 %
    presence: float        # share of replicates with a boundary here

    def overlaps(self, other: BoundaryInterval) -> bool:
        return self.low <= other.high and other.low <= self.high


@dataclass(frozen=True)
class StageUncertainty:
    stage: DetectedStage
    start: BoundaryInterval | None          # None: the run's first checkpoint
    end: BoundaryInterval | None            # None: the run's last checkpoint
    kind_probability: dict[str, float]

    @property
    def resolved(self) -> bool:
        ends = [b for b in (self.start, self.end) if b is not None]
        if any(b.presence < 0.5 for b in ends):
            return False
        return not (self.start is not None and self.end is not None and self.start.overlaps(self.end))

    def interval_text(self, which: str) -> str:
        b = self.start if which == "start" else self.end
        edge = self.stage.start_step if which == "start" else self.stage.end_step
        return str(edge) if b is None else f"{b.step} [{b.low}–{b.high}]"

    def as_dict(self) -> dict[str, object]:
        def one(b: BoundaryInterval | None) -> dict[str, float] | None:
            return None if b is None else {"step": b.step, "low": b.low, "high": b.high, "presence": b.presence}
        return {"start_interval": one(self.start), "end_interval": one(self.end),
                "kind_probability": self.kind_probability, "resolved": self.resolved}


@dataclass(frozen=True)
class BootstrapStages:
    detection: StageDetection               # the reference, after unresolved stages were merged away
    stages: tuple[StageUncertainty, ...]
    boundaries: tuple[BoundaryInterval, ...]
    replicates: int
    dropped: tuple[int, ...] = ()           # reference boundary steps dropped as unresolved


def _resample(estimates: Sequence[NDArray[np.float64]], rng: np.random.Generator
              ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per checkpoint: the mean and standard error of its estimates drawn with replacement."""
    means, sems = [], []
    for e in estimates:
        if e.size == 0:
            means.append(np.nan)
            sems.append(np.nan)
            continue
        draw = e[rng.integers(0, e.size, e.size)]
        means.append(float(draw.mean()))
        sems.append(float(draw.std(ddof=1) / np.sqrt(e.size)) if e.size > 1 else np.nan)
    return np.asarray(means), np.asarray(sems)


def _match(ref_x: Sequence[float], reps: list[tuple[float, ...]], lo: float, hi: float) -> list[list[float]]:
    """For each reference boundary, the nearest boundary of each replicate inside its cell
    (half-way to the neighbouring reference boundaries, or the curve's ends)."""
    edges = [lo, *[(a + b) / 2 for a, b in zip(ref_x[:-1], ref_x[1:], strict=True)], hi]
    out: list[list[float]] = [[] for _ in ref_x]
    for bounds in reps:
        arr = np.asarray(bounds, dtype=float)
        for i, r in enumerate(ref_x):
            inside = arr[(arr >= edges[i]) & (arr <= edges[i + 1])]
            if inside.size:
                out[i].append(float(inside[np.argmin(np.abs(inside - r))]))
    return out


def bootstrap_stages(steps: ArrayLike, estimates: Sequence[ArrayLike], *, loss_steps: ArrayLike | None = None,
                     loss: ArrayLike | None = None, replicates: int = 100, seed: int = 0, z: float = 3.0,
                     lam_jitter: float = 0.5) -> BootstrapStages:
    """Stages of one setting's curve with boundary intervals and type probabilities.

    `estimates[i]`: every per-chain (× seed) λ̂ at `steps[i]`. Deterministic for a given seed.
    """
    steps_arr = np.asarray(steps, dtype=float)
    est = [np.asarray(e, dtype=float)[np.isfinite(np.asarray(e, dtype=float))] for e in estimates]
    mean = np.asarray([e.mean() if e.size else np.nan for e in est])
    sem = np.asarray([e.std(ddof=1) / np.sqrt(e.size) if e.size > 1 else np.nan for e in est])
    kw = dict(loss_steps=loss_steps, loss=loss, z=z)
    ref = detect_stages(steps_arr, mean, sem, **kw)
    lam0 = reference_lam(steps_arr, mean, sem)
    if not ref.boundaries_x and not ref.stages:
        return BootstrapStages(ref, (), (), 0)

    rng = np.random.default_rng(seed)
    reps: list[StageDetection] = []
    for _ in range(replicates):
        m, s = _resample(est, rng)
        lam = None if lam0 is None else lam0 * 10 ** rng.uniform(-lam_jitter, lam_jitter)
        reps.append(detect_stages(steps_arr, m, s, **kw, lam=lam))

    bounds = list(ref.boundaries_x)
    dropped: list[int] = []
    lo, hi = float(ref.fit.grid_x[0]), float(ref.fit.grid_x[-1])
    while True:
        matched = _match(bounds, [r.boundaries_x for r in reps], lo, hi)
        intervals = [_interval(b, m, len(reps)) for b, m in zip(bounds, matched, strict=True)]
        xs = [lo, *bounds, hi]
        stages = stages_between(ref.fit, ref.loss_fit, xs, steps_arr)
        out = [StageUncertainty(st, intervals[i - 1] if i else None, intervals[i] if i < len(bounds) else None,
                                _kind_probability((xs[i], xs[i + 1]), reps, steps_arr))
               for i, st in enumerate(stages)]
        weak = [i for i, u in enumerate(out) if not u.resolved]
        if not weak or not bounds:
            break
        # Drop the least present boundary of the unresolved stages and try again.
        cands = {j for i in weak for j in (i - 1, i) if 0 <= j < len(bounds)}
        j = min(cands, key=lambda k: (intervals[k].presence, -(intervals[k].high - intervals[k].low)))
        dropped.append(intervals[j].step)
        del bounds[j]
    detection = StageDetection(ref.fit, ref.loss_fit, tuple(bounds), tuple(u.stage for u in out), ref.noise,
                               ref.threshold, ref.notes)
    return BootstrapStages(detection, tuple(out), tuple(intervals), len(reps), tuple(dropped))


def _interval(ref_x: float, matched: list[float], n: int) -> BoundaryInterval:
    step = int(round(float(to_step(ref_x))))
    if not matched:
        return BoundaryInterval(step, step, step, 0.0)
    lo, hi = np.percentile(np.asarray(matched), [5, 95])
    return BoundaryInterval(step, int(round(float(to_step(min(lo, ref_x))))), int(round(float(to_step(max(hi, ref_x))))),
                            len(matched) / max(1, n))


def _kind_probability(span: tuple[float, float], reps: Sequence[StageDetection], steps: NDArray[np.float64]) -> dict[str, float]:
    """Share of replicates whose λ̂ fit gives this span (log-steps) each type: the same stretch of
    training re-typed under each resampled curve, not whichever replicate stage sits at its middle
    (a short stage split off there would decide a long stage's type)."""
    counts = Counter(stages_between(r.fit, r.loss_fit, list(span), steps)[0].kind for r in reps)
    n = max(1, len(reps))
    return {k: round(counts.get(k, 0) / n, 3) for k in KINDS}
