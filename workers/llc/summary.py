"""The LLCResult of one run's chain records: lambda_hat per chain, diagnostics and notes.

Diverged chains are never averaged in: llc_mean is over the others (NaN when all diverged).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from .chains import ChainRecords
from .config import SGLDConfig
from .diagnostics import drift_z, ess_bulk, ess_tail, r_hat_bulk, r_hat_tail
from .memory import MemoryPlan
from .result import LLCResult
from .steppers import InPlaceStepper


def summarize(rec: ChainRecords, *, cfg: SGLDConfig, nbeta: float, n: int, baseline_const: float | None,
              path: str, fallback_reason: str | None, sampling_s: float, wall_s: float, cpu_s: float, num_sampled: int,
              device: str, stepper: Any, baseline_method: str, compile_note: str | None,
              loss_wstar: tuple[float, str], plan: MemoryPlan) -> LLCResult:
    """lambda_hat_chain = nbeta * mean over draws of (L_m(w_t) - baseline_t), with the run's diagnostics."""
    base = rec.baseline if baseline_const is None else np.full_like(rec.loss, baseline_const)
    ok = ~rec.diverged
    per_chain = np.full(cfg.num_chains, np.nan)
    if ok.any():
        per_chain[ok] = nbeta * (rec.loss[ok] - base[ok]).mean(axis=1)
    valid = per_chain[ok]
    llc_mean = float(valid.mean()) if valid.size else float("nan")
    llc_std = float(valid.std(ddof=1)) if valid.size >= 2 else float("nan")
    good_loss = rec.loss[ok]
    good_base = base[ok]
    mala = [a for c in np.flatnonzero(ok) for a in rec.mala_accept[c]]
    # On L_m(w_t) - baseline_t: the quantity averaged into lambda_hat (for a constant baseline
    # this equals the loss trace's diagnostics; for "paired" it drops batch noise).
    delta = good_loss - good_base
    dropped = int(rec.diverged.sum())
    diagnostics: dict[str, Any] = {
        "r_hat": max(r_hat_bulk(delta), r_hat_tail(delta)),
        "r_hat_bulk": r_hat_bulk(delta),
        "r_hat_tail": r_hat_tail(delta),
        "ess": ess_bulk(delta),
        "ess_bulk": ess_bulk(delta),
        "ess_tail": ess_tail(delta),
        "drift_z": drift_z(delta),
        "diverged": dropped > 0,
        "num_diverged": dropped,
        "chains_dropped": dropped,
        "partially_diverged": 0 < dropped < cfg.num_chains,
        "epsilon": float(cfg.epsilon),
        "gamma": float(cfg.gamma),
        "num_burnin": int(cfg.num_burnin),
        "chain_steps": int(rec.chain_steps),
        "frac_draws_below_init": float((good_loss < good_base).mean()) if good_loss.size else float("nan"),
        "mala_acceptance": float(np.mean(mala)) if mala else None,
        "steps_per_second": rec.chain_steps / sampling_s if sampling_s > 0 else float("nan"),
        "sampling_time_s": sampling_s,
        "wall_time_s": wall_s,
        "cpu_time_s": cpu_s,         # this process's CPU seconds (all threads): less sensitive to a busy machine
        "vectorized": path == "vectorized",
        "num_sampled_params": int(num_sampled),
        "compiled": bool(stepper.compiled),
        "compile_time_s": float(stepper.compile_s),
        "baseline_item_table": baseline_method == "item_table",
        "memory_estimate_bytes": int(plan.peak_bytes),
        "memory_budget_bytes": int(plan.budget_bytes),
        "memory_activations_per_item": int(plan.estimate.activations_per_item),   # the probe's, per chain
        "chains_per_group": plan.chains_per_group if path == "vectorized" else 1,
        "micro_batches": plan.micro_batches,
        "in_place_chain": isinstance(stepper, InPlaceStepper),
        "activation_checkpointing": bool(cfg.activation_checkpointing),
    }
    notes = {"baseline": baseline_method}
    if 0 < dropped < cfg.num_chains:
        notes["divergence"] = (f"{dropped} of {cfg.num_chains} chains diverged and were dropped: llc_mean is over "
                               "the survivors, which may be biased by that selection")
    if stepper.compile_error:
        notes["compile"] = stepper.compile_error
    elif compile_note and (stepper.compiled or compile_note.startswith("not compiled")):
        notes["compile"] = compile_note
    baseline_loss = float(np.nanmean(good_base)) if baseline_const is None and good_base.size else (
        baseline_const if baseline_const is not None else float("nan"))
    wstar, wstar_note = loss_wstar
    if not math.isfinite(wstar):
        wstar = baseline_loss
    notes["loss_wstar"] = wstar_note
    return LLCResult(
        llc_mean=llc_mean, llc_std=llc_std, llc_per_chain=per_chain.tolist(),
        init_loss=float(np.nanmean(rec.init_loss)), baseline_loss=float(baseline_loss), nbeta=nbeta, n=n,
        loss_trace=rec.loss, baseline_trace=base, diverged=bool(rec.diverged.any()),
        chain_diverged=rec.diverged.tolist(), diagnostics=diagnostics, path=path,
        fallback_reason=fallback_reason, device=device, notes=notes, loss_wstar=float(wstar),
    )


def known_loss_wstar(cfg: SGLDConfig, paired: Any, baseline_const: float | None) -> tuple[float, str]:
    """L_n(w*) when known exactly (item table, full baseline), with where it came from."""
    if paired is not None and hasattr(paired, "losses"):
        return float(paired.losses.mean()), "exact: mean of the per-item losses at w*"
    if cfg.baseline == "full" and baseline_const is not None:
        return float(baseline_const), "exact: the full-data baseline"
    return float("nan"), "estimate: mean of the draws' minibatch losses at w*"
