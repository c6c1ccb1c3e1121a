"""SGLD estimator of the local learning coefficient (LLC, lambda_hat) at a checkpoint w*.

    w <- w - (eps/2) (nbeta grad L_m(w) + gamma (w - w*)) + N(0, eps I)
    lambda_hat_chain = nbeta * mean over draws (after burn-in) of (L_m(w_t) - baseline)

Chains run as one vmapped computation when possible, else one after another; chain c's
minibatches and noise come from its own seeded generators, so both paths draw the same
randomness. Imports torch and numpy only.
"""
from __future__ import annotations

from .config import SGLDConfig
from .diagnostics import ess, split_r_hat
from .estimator import estimate_llc
from .result import LLCResult

# Part of job keys: bump when a change can alter results for the same inputs.
ESTIMATOR_VERSION = "1.1.0"   # 1.1: paired baselines from the per-item table (float rounding)

__all__ = ["ESTIMATOR_VERSION", "LLCResult", "SGLDConfig", "estimate_llc", "ess", "split_r_hat"]
