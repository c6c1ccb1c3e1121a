"""SGLD estimator of the local learning coefficient (LLC, lambda_hat) at a checkpoint w*.

    w <- w - (eps/2) (nbeta grad L_m(w) + gamma (w - w*)) + N(0, eps I)
    lambda_hat_chain = nbeta * mean over draws (after burn-in) of (L_m(w_t) - baseline)

Chains run as one vmapped computation when possible, else one after another; chain c's
minibatches (drawn with replacement) and noise come from its own seeded generators, so both
paths draw the same randomness, and both are held to the plain reference loop (reference.py).
epsilon="auto" picks the step size by a short pilot (calibration.py). Imports torch and numpy only.
"""
from __future__ import annotations

from .config import SGLDConfig
from .diagnostics import ess, ess_bulk, ess_tail, rank_r_hat, split_r_hat
from .estimator import estimate_llc
from .result import LLCResult

# Part of job keys: bump when a change can alter results for the same inputs.
# 2.2: gamma="auto" passes over a localized pilot that has not mixed (R-hat, drift) instead of ending
#      the scan there; a gamma_hint too weak to relax within gamma_pilot_steps is scanned instead.
# 2.1: gamma="auto" steps the pilots' step up (c = 0.1, 1) when none passes at c = 0.01, and
#      returns the picked pilot when it holds the run (same seed, chains, step; enough draws).
# 2.0: batches with replacement (removes an upward bias), rank-normalized diagnostics,
#      float64 losses kept, epsilon="auto", rmsprop_sgld.  1.1: paired baselines from the per-item table.
ESTIMATOR_VERSION = "2.2.0"

__all__ = ["ESTIMATOR_VERSION", "LLCResult", "SGLDConfig", "estimate_llc", "ess", "ess_bulk", "ess_tail",
           "rank_r_hat", "split_r_hat"]
