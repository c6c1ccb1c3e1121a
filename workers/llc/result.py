"""What one LLC estimate returns."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class LLCResult:
    """One estimate. llc_mean/llc_std are over non-diverged chains (NaN if none / fewer than 2);
    a diverged chain's llc_per_chain entry is NaN and its loss_trace is NaN from the step it
    diverged. diagnostics holds only scalars (float/int/bool/None)."""

    llc_mean: float
    llc_std: float
    llc_per_chain: list[float]
    init_loss: float          # mean over chains of L_m(w*) on each chain's first minibatch
    baseline_loss: float      # the subtracted baseline (mean of the paired baselines for "paired")
    nbeta: float
    n: int
    loss_trace: np.ndarray    # (chains, draws) L_m(w_t) at the draws
    baseline_trace: np.ndarray  # (chains, draws) the baseline subtracted at each draw
    diverged: bool
    chain_diverged: list[bool]
    diagnostics: dict[str, Any] = field(default_factory=dict)
    path: str = "vectorized"  # "vectorized" | "sequential"
    fallback_reason: str | None = None  # why the vectorized path was not used, if it was wanted
    device: str = "cpu"
    notes: dict[str, str] = field(default_factory=dict)  # how it ran, in words: "baseline", "compile" (why eager)
    loss_wstar: float = float("nan")   # L_n(w*) (exact when notes["loss_wstar"] says so, else the mean paired baseline)
    calibration: dict[str, Any] | None = None   # epsilon="auto": the grid, per-step lambda_hat, the pick and why
    gamma_calibration: dict[str, Any] | None = None   # gamma="auto": the same for the localization strength
