"""λ̂ over training per hyperparameter setting, from a sweep's result rows.

A setting is a job's hyperparameters (everything but the seed); its curve has one point per
checkpoint pooling every chain of every seed, so the band shows the spread across chains
and seeds. Diverged and failed jobs are left out of the curves and counted.
"""
from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from services.core.labels import setting_labels
from services.core.numbers import finite_or_none
from services.core.status import JobStatus
from services.store.jobkey import setting_key
from services.store.entities import ResultRow



@dataclass(frozen=True)
class CheckpointPoint:
    """One checkpoint of one setting: λ̂ pooled over chains and seeds, with its uncertainty."""

    step: int
    checkpoint_uri: str
    llc_mean: float
    llc_std: float            # spread of the per-chain estimates across chains and seeds
    llc_sem: float            # llc_std / sqrt(estimates): the uncertainty of llc_mean
    n_estimates: int          # chains × seeds pooled
    n_jobs: int               # seeds
    loss_wstar: float | None  # L_n(w*) at the checkpoint (init_loss for results without it), mean over jobs
    r_hat_max: float | None   # worst R-hat over the seeds' jobs (None if any job lacks one)
    estimates: tuple[float, ...] = ()   # every per-chain λ̂ of every seed (what the stage bootstrap resamples)


@dataclass(frozen=True)
class SettingCurve:
    key: str                              # services.store.jobkey.setting_key of the hyperparameters
    label: str                            # e.g. "eps=0.0003 gamma=100"
    hyperparameters: dict[str, Any]
    points: tuple[CheckpointPoint, ...]   # sorted by step
    counts: dict[str, int]                # job status -> count, for this setting
    diverged_steps: tuple[int, ...] = field(default=())  # checkpoints where a job diverged
    partial_steps: tuple[int, ...] = field(default=())   # checkpoints with a job kept after dropping some chains

    @property
    def metric_label(self) -> str:
        """The label as an MLflow metric suffix (no '=' or spaces)."""
        return self.label.replace("=", "").replace(" ", "_") or "default"

    @property
    def epsilon(self) -> float:
        eps = self.hyperparameters.get("epsilon")
        return float(eps) if isinstance(eps, (int, float)) else 0.0

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """steps, λ̂ mean, λ̂ std, λ̂ sem."""
        return (np.array([p.step for p in self.points], dtype=float), np.array([p.llc_mean for p in self.points]),
                np.array([p.llc_std for p in self.points]), np.array([p.llc_sem for p in self.points]))


def _estimates(row: ResultRow) -> list[float]:
    """The row's per-chain λ̂ values (its mean alone when the chains were not stored)."""
    chains = [v for v in (finite_or_none(c) for c in (row.llc_per_chain or [])) if v is not None]
    if chains:
        return chains
    mean = finite_or_none(row.llc_mean)
    return [mean] if mean is not None else []


def _point(step: int, rows: list[ResultRow]) -> CheckpointPoint | None:
    values = [v for r in rows for v in _estimates(r)]
    if not values:
        return None
    arr = np.asarray(values)
    std = float(arr.std(ddof=1)) if arr.size > 1 else float("nan")
    if arr.size == 1 or not math.isfinite(std):
        std = finite_or_none(rows[0].llc_std) or float("nan")  # one chain: the job's own spread estimate
    losses = [v for v in (finite_or_none(r.loss_at_wstar) for r in rows) if v is not None]
    rhats = [finite_or_none((r.diagnostics or {}).get("r_hat")) for r in rows]
    return CheckpointPoint(
        step=step, checkpoint_uri=rows[0].checkpoint_uri, llc_mean=float(arr.mean()), llc_std=std,
        llc_sem=std / math.sqrt(arr.size) if math.isfinite(std) else float("nan"),
        n_estimates=int(arr.size), n_jobs=len(rows), loss_wstar=float(np.mean(losses)) if losses else None,
        r_hat_max=None if any(r is None for r in rhats) else float(max(rhats)),  # type: ignore[type-var]
        estimates=tuple(float(v) for v in arr),
    )


def diverged_share(row: ResultRow) -> float:
    """Share of the job's chains that diverged (dropped chains have no finite per-chain λ̂)."""
    chains = list(row.llc_per_chain or [])
    if not chains:
        return 1.0
    return sum(1 for c in chains if finite_or_none(c) is None) / len(chains)


def build_curves(rows: Iterable[ResultRow], *, max_diverged_share: float = 0.0
                 ) -> tuple[list[SettingCurve], Counter[str]]:
    """Curves per setting (sorted by ε, then label) and the sweep's job counts by status.

    A diverged job whose share of dropped chains is at most max_diverged_share (and that has
    an estimate) is kept in its curve from its surviving chains and marked (counts
    "partially_diverged", partial_steps); above it the job is left out, as with 0 (the default)."""
    groups: dict[str, list[ResultRow]] = defaultdict(list)
    hyper: dict[str, dict[str, Any]] = {}
    totals: Counter[str] = Counter()
    for row in rows:
        key = setting_key(row.hyperparameters)
        groups[key].append(row)
        hyper[key] = dict(row.hyperparameters)
        totals[row.status] += 1
    keys = list(groups)
    labels = dict(zip(keys, setting_labels([hyper[k] for k in keys]), strict=True))
    curves = []
    for key in keys:
        by_step: dict[int, list[ResultRow]] = defaultdict(list)
        counts: Counter[str] = Counter()
        diverged: set[int] = set()
        partial: set[int] = set()
        for row in groups[key]:
            if row.status == "diverged" and finite_or_none(row.llc_mean) is not None \
                    and diverged_share(row) <= max_diverged_share:
                counts["partially_diverged"] += 1
                partial.add(int(row.step))
                by_step[int(row.step)].append(row)
                continue
            counts[row.status] += 1
            if row.status == JobStatus.DIVERGED:
                diverged.add(int(row.step))
            if row.status == JobStatus.SUCCEEDED:
                by_step[int(row.step)].append(row)
        points = [p for step in sorted(by_step) if (p := _point(step, by_step[step])) is not None]
        curves.append(SettingCurve(key=key, label=labels[key], hyperparameters=hyper[key], points=tuple(points),
                                   counts=dict(counts), diverged_steps=tuple(sorted(diverged)),
                                   partial_steps=tuple(sorted(partial))))
    curves.sort(key=lambda c: (c.epsilon, c.label))
    return curves, totals
