"""Hyperparameter stability: which (ε, γ, nβ, ...) settings give trustworthy λ̂.

A setting is usable when none of its jobs diverged (beyond the allowed share of dropped
chains, see curves.build_curves) or failed, it has an estimate at every
checkpoint the sweep measured, every estimate is finite and positive, the chains agree
(R-hat below a threshold at every checkpoint: converged) and the spread across chains and
seeds stays a modest fraction of λ̂ (stable). The recommendation is the largest usable ε:
larger steps mix faster, so among trustworthy settings it wastes the least compute.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from services.aggregator.curves import SettingCurve


@dataclass(frozen=True)
class SettingStability:
    key: str
    label: str
    hyperparameters: dict[str, Any]
    epsilon: float
    checkpoints: int
    missing_steps: tuple[int, ...]
    diverged_jobs: int
    failed_jobs: int
    max_r_hat: float | None
    max_rel_spread: float | None      # max over checkpoints of std / |mean|
    min_llc: float | None
    converged: bool
    stable: bool
    reasons: tuple[str, ...]          # why it is not usable (empty when it is)
    partially_diverged_jobs: int = 0  # kept in the curve after dropping at most the allowed share of chains

    @property
    def usable(self) -> bool:
        return not self.reasons


@dataclass(frozen=True)
class Recommendation:
    key: str
    label: str
    hyperparameters: dict[str, Any]
    reason: str


def assess(curves: Sequence[SettingCurve], *, r_hat_threshold: float = 1.1,
           max_rel_spread: float = 0.5) -> list[SettingStability]:
    """One stability verdict per setting (same order as `curves`)."""
    all_steps = sorted({p.step for c in curves for p in c.points} | {s for c in curves for s in c.diverged_steps})
    out = []
    for c in curves:
        have = {p.step for p in c.points}
        missing = tuple(s for s in all_steps if s not in have)
        rhats = [p.r_hat_max for p in c.points]
        known = [r for r in rhats if r is not None]
        max_r_hat = max(known) if known else None
        spreads = [abs(p.llc_std / p.llc_mean) if p.llc_mean else float("inf") for p in c.points if p.llc_std == p.llc_std]
        max_spread = max(spreads) if spreads else None
        min_llc = min((p.llc_mean for p in c.points), default=None)
        diverged = c.counts.get("diverged", 0)
        failed = c.counts.get("failed", 0)
        converged = bool(c.points) and len(known) == len(rhats) and max_r_hat is not None and max_r_hat < r_hat_threshold
        stable = (bool(c.points) and min_llc is not None and min_llc > 0
                  and (max_spread is None or max_spread <= max_rel_spread))
        reasons = []
        if diverged:
            reasons.append(f"{diverged} diverged job(s)")
        if failed:
            reasons.append(f"{failed} failed job(s)")
        if not c.points:
            reasons.append("no finished estimates")
        elif missing:
            reasons.append(f"no estimate at {len(missing)} checkpoint(s)")
        if c.points and not converged:
            reasons.append("R-hat unknown" if len(known) < len(rhats) else f"R-hat {max_r_hat:.3g} ≥ {r_hat_threshold:g}")
        if c.points and min_llc is not None and min_llc <= 0:
            reasons.append(f"λ̂ ≤ 0 (min {min_llc:.3g})")
        if max_spread is not None and max_spread > max_rel_spread:
            reasons.append(f"spread {max_spread:.0%} of λ̂ > {max_rel_spread:.0%}")
        out.append(SettingStability(
            key=c.key, label=c.label, hyperparameters=c.hyperparameters, epsilon=c.epsilon,
            checkpoints=len(c.points), missing_steps=missing, diverged_jobs=diverged, failed_jobs=failed,
            max_r_hat=max_r_hat, max_rel_spread=max_spread, min_llc=min_llc, converged=converged,
            stable=stable, reasons=tuple(reasons), partially_diverged_jobs=c.counts.get("partially_diverged", 0)))
    return out


def recommend(verdicts: Sequence[SettingStability]) -> Recommendation | None:
    """The largest ε among usable settings (ties: lower R-hat, then smaller spread)."""
    usable = [v for v in verdicts if v.usable]
    if not usable:
        return None
    best = sorted(usable, key=lambda v: (-v.epsilon, v.max_r_hat or 0.0, v.max_rel_spread or 0.0))[0]
    return Recommendation(
        key=best.key, label=best.label, hyperparameters=best.hyperparameters,
        reason=(f"largest ε ({best.epsilon:g}) whose estimates are converged (max R-hat {best.max_r_hat:.3g}), "
                f"stable and never diverged; {len(usable)} of {len(verdicts)} setting(s) usable"))
