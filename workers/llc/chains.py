"""The SGLD loop shared by both paths: one group of chains advancing in lockstep.

w <- w - (eps/2) (nbeta grad L_m(w) + gamma (w - w*)) + N(0, eps I). Chain c's batches
and noise come from its own generators, so a chain's trajectory does not depend on which
other chains share its group. A chain whose loss turns non-finite or blows up is
dropped from the group at that step (its draws so far are kept, marked diverged).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .config import SGLDConfig
from .data import BatchSource, IndexStream

Progress = Callable[[int], None]


@dataclass
class ChainRecords:
    """Per-chain outputs, filled in by run_group for the chains it owns."""

    num_chains: int
    num_draws: int
    loss: np.ndarray = field(init=False)
    baseline: np.ndarray = field(init=False)
    init_loss: np.ndarray = field(init=False)
    diverged: np.ndarray = field(init=False)
    diverged_at_step: np.ndarray = field(init=False)
    mala_accept: list[list[float]] = field(init=False)
    chain_steps: int = 0

    def __post_init__(self) -> None:
        c, d = self.num_chains, self.num_draws
        self.loss = np.full((c, d), np.nan)
        self.baseline = np.full((c, d), np.nan)
        self.init_loss = np.full(c, np.nan)
        self.diverged = np.zeros(c, dtype=bool)
        self.diverged_at_step = np.full(c, -1, dtype=np.int64)
        self.mala_accept = [[] for _ in range(c)]


def run_group(*, stepper: Any, source: BatchSource, chains: list[int], streams: list[IndexStream],
              noise_gens: list[torch.Generator], flat0: torch.Tensor, cfg: SGLDConfig, nbeta: float,
              paired: bool, records: ChainRecords, progress: Progress) -> None:
    """Run cfg.num_steps SGLD steps for `chains` (all in one stepper call per step)."""
    eps, gamma = cfg.epsilon, cfg.gamma
    sqrt_eps = math.sqrt(eps)
    active = list(chains)
    gens = list(noise_gens)
    strs = list(streams)
    flat = flat0.unsqueeze(0).repeat(len(active), 1)
    total = cfg.num_steps
    for t in range(total):
        idx = torch.stack([s.next() for s in strs])
        batch = stepper.batch(source, idx)
        draw, rem = divmod(t - cfg.num_burnin, cfg.steps_between_draws)
        is_draw = draw >= 0 and rem == 0
        # A non-finite gradient shows up as a non-finite loss one step later.
        loss, grad, base = stepper.loss_and_grad(flat, batch, baseline=paired and is_draw)
        loss_np = loss.double().cpu().numpy()
        rows = list(active)
        if t == 0:
            records.init_loss[rows] = loss_np
        init = records.init_loss[rows]
        bad = ~np.isfinite(loss_np) | (loss_np > init + cfg.divergence_ratio * (np.abs(init) + 1.0))
        if is_draw:
            records.loss[rows, draw] = np.where(bad, np.nan, loss_np)
            if base is not None:
                records.baseline[rows, draw] = base.double().cpu().numpy()
        records.chain_steps += len(active)
        progress(len(active))
        if bad.any():
            for i in np.flatnonzero(bad):
                records.diverged[rows[i]] = True
                records.diverged_at_step[rows[i]] = t
            keep = np.flatnonzero(~bad)
            if keep.size == 0:
                return
            keep_t = torch.as_tensor(keep, device=flat.device)
            flat, grad, loss = flat[keep_t], grad[keep_t], loss[keep_t]
            active = [active[i] for i in keep]
            gens = [gens[i] for i in keep]
            strs = [strs[i] for i in keep]
            if is_draw:
                batch = None
        if t == total - 1:
            break
        with torch.no_grad():
            noise = torch.empty_like(flat)
            for row, g in zip(noise, gens):
                torch.randn(row.shape, generator=g, device=flat.device, dtype=flat.dtype, out=row)
            offset = flat - flat0
            drift = grad.to(flat.dtype).mul_(nbeta).add_(offset, alpha=gamma)
            want_mala = cfg.mala and is_draw and batch is not None
            if want_mala:
                u_old = nbeta * loss.double() + 0.5 * gamma * offset.double().pow(2).sum(dim=1)
            flat.add_(drift, alpha=-0.5 * eps).add_(noise, alpha=sqrt_eps)
        if want_mala:
            _mala(stepper, batch, flat, flat0, drift, noise, u_old, nbeta=nbeta, eps=eps, gamma=gamma,
                  out=[records.mala_accept[c] for c in active])


def _mala(stepper: Any, batch: Any, flat: torch.Tensor, flat0: torch.Tensor, drift_old: torch.Tensor,
          noise: torch.Tensor, u_old: torch.Tensor, *, nbeta: float, eps: float, gamma: float,
          out: list[list[float]]) -> None:
    """Metropolis acceptance probability of the step just taken, on the same minibatch."""
    loss_new, grad_new, _ = stepper.loss_and_grad(flat, batch)
    with torch.no_grad():
        offset = flat - flat0
        u_new = nbeta * loss_new.double() + 0.5 * gamma * offset.double().pow(2).sum(dim=1)
        drift_new = grad_new.to(flat.dtype).mul_(nbeta).add_(offset, alpha=gamma)
        # Reverse proposal residual: w_old - w_new + (eps/2) drift(w_new)
        #   = (eps/2)(drift_old + drift_new) - sqrt(eps) * noise
        resid = (drift_old + drift_new).mul_(0.5 * eps).sub_(noise, alpha=math.sqrt(eps))
        log_q_rev = -resid.double().pow(2).sum(dim=1) / (2 * eps)
        log_q_fwd = -0.5 * noise.double().pow(2).sum(dim=1)
        log_alpha = (u_old - u_new + log_q_rev - log_q_fwd).clamp(max=0.0)
        accept = torch.exp(log_alpha).nan_to_num(0.0).cpu().tolist()
    for lst, a in zip(out, accept):
        lst.append(float(a))
