"""The fast SGLD loop shared by both paths: one group of chains advancing in lockstep.

The update itself is sgld.SGLDStep (the same one the plain reference loop in reference.py
uses; tests hold this loop to it on the same seed). Chain c's batches
and noise come from its own generators, so a chain's trajectory does not depend on which
other chains share its group. A chain whose loss turns non-finite or blows up is
dropped from the group at the next divergence check (every _CHECK_EVERY steps; one host
sync each): its draws before the divergent step are kept, later ones discarded, and it is
marked diverged at that step, exactly as if it had been dropped there.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils._pytree import tree_map

from .config import SGLDConfig
from .data import BatchSource, IndexStream
from .sgld import SGLDStep

Progress = Callable[[int], None]


@dataclass
class ChainRecords:
    """Per-chain outputs, filled in by run_group for the chains it owns."""

    num_chains: int
    num_draws: int
    loss: np.ndarray = field(init=False)
    baseline: np.ndarray = field(init=False)
    init_loss: np.ndarray = field(init=False)
    dist2: np.ndarray = field(init=False)       # (chains, draws) |w_t - w*|^2 (NaN unless tracked)
    diverged: np.ndarray = field(init=False)
    diverged_at_step: np.ndarray = field(init=False)
    mala_accept: list[list[float]] = field(init=False)
    chain_steps: int = 0

    def __post_init__(self) -> None:
        c, d = self.num_chains, self.num_draws
        self.loss = np.full((c, d), np.nan)
        self.baseline = np.full((c, d), np.nan)
        self.init_loss = np.full(c, np.nan)
        self.dist2 = np.full((c, d), np.nan)
        self.diverged = np.zeros(c, dtype=bool)
        self.diverged_at_step = np.full(c, -1, dtype=np.int64)
        self.mala_accept = [[] for _ in range(c)]


# Divergence is checked (one host sync) every this many steps, not after every step: a chain
# that diverged keeps stepping (on its own generators, so no other chain notices) until the
# next check, and everything it recorded after the divergent step is discarded.
_CHECK_EVERY = 16
# Columns of w - w* formed at a time in the SGLD drift (sgld.SGLDStep.drift's scratch).
_OFFSET_CHUNK = 1 << 20
# Columns per chunk of the CPU update (sgld.SGLDStep.apply_in_chunks): small enough to stay in cache.
_NOISE_CHUNK = 1 << 16


def run_group(*, stepper: Any, source: BatchSource, chains: list[int], streams: list[IndexStream],
              noise_gens: list[torch.Generator], flat0: torch.Tensor, cfg: SGLDConfig, step: SGLDStep,
              paired: Any | None, records: ChainRecords, progress: Progress, track_distance: bool = False) -> None:
    """Run cfg.num_steps SGLD steps for `chains` (all in one stepper call per step).

    Losses stay on the device in a (chains, steps) trace until the end; divergence is checked
    every _CHECK_EVERY steps; paired baselines L_m(w*) (independent of the chain state) are
    computed from the recorded batch indices, many batches per call, by `paired` (the
    stepper itself or an ItemLossTable; None: a constant baseline). track_distance also records
    |w_t - w*|^2 at the draws (gamma="auto" pilots: are the chains staying localized?).
    """
    eps, gamma, nbeta = step.epsilon, step.gamma, step.nbeta
    dev = flat0.device
    group = len(chains)
    total = cfg.num_steps
    gens = list(noise_gens)
    strs = list(streams)
    rows = list(range(group))                      # group rows still stepping
    rows_t: torch.Tensor | None = None             # the same as a device tensor (None: all rows)
    flat = stepper.chain_start(flat0, group)
    # float64 models keep float64 losses; everything else records float32.
    trace = torch.full((group, total), float("nan"), device=dev,
                       dtype=torch.float64 if flat0.dtype == torch.float64 else torch.float32)
    precond_state: dict[str, torch.Tensor] = {}
    first_bad = np.full(group, total, dtype=np.int64)   # first divergent step per row (total: none)
    mala_acc = torch.full((group, cfg.num_draws), float("nan"), device=dev, dtype=torch.float64) if cfg.mala else None
    dist2 = torch.full((group, cfg.num_draws), float("nan"), device=dev, dtype=torch.float64) if track_distance else None
    baselines = _PairedBaselines(paired, source, chains, chunk=16 * group) if paired is not None else None
    init: torch.Tensor | None = None
    buffers: tuple[torch.Tensor, torch.Tensor] | None = None   # (noise, offset chunk), reused across steps
    # Plain SGLD on CPU draws noise and updates _NOISE_CHUNK columns at a time (no noise buffer).
    in_chunks = dev.type == "cpu" and step.method == "sgld" and mala_acc is None
    checked = 0
    to_device = source.indexes_on_device and dev.type != "cpu"
    for t in range(total):
        if t == checked:
            # The batch indices of the window up to the next check, all chains, one transfer
            # (a pageable host-to-device copy per step would wait for the device every step).
            span = min(_CHECK_EVERY, total - t)
            block_cpu = torch.stack([torch.stack([s.next() for s in strs]) for _ in range(span)])
            if to_device:
                block = (block_cpu.pin_memory() if dev.type == "cuda" else block_cpu).to(dev, non_blocking=True)
            else:
                block = block_cpu
        idx = block_cpu[t - checked]
        batch = stepper.batch(source, block[t - checked])
        draw, rem = divmod(t - cfg.num_burnin, cfg.steps_between_draws)
        is_draw = draw >= 0 and rem == 0
        # A non-finite gradient shows up as a non-finite loss one step later.
        loss, grad = stepper.loss_and_grad(flat, batch)
        if rows_t is None:
            trace[:, t] = loss
        else:
            trace[:, t].index_copy_(0, rows_t, loss)
        if t == 0:
            init = loss.detach().clone()
        if baselines is not None and is_draw:
            baselines.add(t, draw, rows, idx)
        if dist2 is not None and is_draw:
            with torch.no_grad():
                d2 = (flat - flat0).double().square().sum(dim=1)
            if rows_t is None:
                dist2[:, draw] = d2
            else:
                dist2[:, draw].index_copy_(0, rows_t, d2)
        progress(len(rows))
        if t + 1 - checked >= _CHECK_EVERY or t == total - 1:
            # Chains past their first bad step stop here; the others never saw them.
            window = trace[rows_t if rows_t is not None else slice(None), checked:t + 1]
            base0 = init if rows_t is None else init[rows_t]
            limit = (base0 + cfg.divergence_ratio * (base0.abs() + 1.0)).unsqueeze(1)
            bad = ~torch.isfinite(window) | (window > limit)
            any_bad = bad.any(dim=1)
            if bool(any_bad.any()):
                first = bad.to(torch.int8).argmax(dim=1).cpu().numpy()
                flags = any_bad.cpu().numpy()
                keep = [i for i, f in enumerate(flags) if not f]
                for i in np.flatnonzero(flags):
                    first_bad[rows[i]] = checked + int(first[i])
                if not keep:
                    rows = []
                    break
                keep_t = torch.as_tensor(keep, device=dev)
                flat, grad, loss = flat[keep_t], grad[keep_t], loss[keep_t]
                rows = [rows[i] for i in keep]
                rows_t = torch.as_tensor(rows, device=dev)
                gens = [gens[i] for i in keep]
                step.select(precond_state, keep_t)
                strs = [strs[i] for i in keep]
                if stepper.path == "vectorized":       # (G, B, ...) -> the kept chains' batches
                    batch = tree_map(lambda v: v[keep_t] if isinstance(v, torch.Tensor) else v, batch)
            checked = t + 1
            if baselines is not None:
                baselines.flush(first_bad)
        if t == total - 1:
            break
        with torch.no_grad():
            # Buffers reused across steps: a fresh (chains, D) tensor per step costs page faults
            # comparable to the update itself on a 70M-parameter model.
            if in_chunks:
                if buffers is None or buffers[1].shape[0] != flat.shape[0]:
                    buffers = (flat.new_empty(0), flat.new_empty(flat.shape[0], 2 * _NOISE_CHUNK))
                step.apply_in_chunks(flat, flat0, grad, gens, chunk=_NOISE_CHUNK, scratch=buffers[1])
                continue
            if buffers is None or buffers[0].shape != flat.shape:
                buffers = (torch.empty_like(flat), flat.new_empty(flat.shape[0], min(flat.shape[1], _OFFSET_CHUNK)))
            noise = buffers[0]
            for row, g in zip(noise, gens, strict=True):
                torch.randn(row.shape, generator=g, device=dev, dtype=flat.dtype, out=row)
            want_mala = mala_acc is not None and is_draw
            if want_mala:
                u_old = nbeta * loss.double() + 0.5 * gamma * (flat - flat0).double().pow(2).sum(dim=1)
            drift = step.apply(flat, flat0, grad, noise, precond_state, scratch=buffers[1])
        if want_mala:
            # drift may be the stepper's reused gradient buffer, which _mala's own step overwrites.
            acc = _mala(stepper, batch, flat, flat0, drift.clone(), noise, u_old, nbeta=nbeta, eps=eps, gamma=gamma)
            if rows_t is None:
                mala_acc[:, draw] = acc
            else:
                mala_acc[:, draw].index_copy_(0, rows_t, acc)
    _record(records, chains=chains, cfg=cfg, trace=trace, first_bad=first_bad, mala_acc=mala_acc, dist2=dist2)
    if baselines is not None:
        baselines.finish(records, first_bad)


def _record(records: ChainRecords, *, chains: list[int], cfg: SGLDConfig, trace: torch.Tensor,
            first_bad: np.ndarray, mala_acc: torch.Tensor | None, dist2: torch.Tensor | None = None) -> None:
    """Copy a group's device trace into records (one transfer), NaN from each divergent step on."""
    total = cfg.num_steps
    tr = trace.double().cpu().numpy()
    steps = cfg.num_burnin + np.arange(cfg.num_draws) * cfg.steps_between_draws
    acc = mala_acc.cpu().numpy() if mala_acc is not None else None
    dist = dist2.cpu().numpy() if dist2 is not None else None
    # As when chains were dropped at their divergent step: no MALA at a step where a chain of the group diverged.
    div_steps = np.isin(steps, first_bad[first_bad < total])
    for i, c in enumerate(chains):
        s = int(first_bad[i])
        records.init_loss[c] = tr[i, 0]
        loss = tr[i, steps]
        loss[steps >= s] = np.nan
        records.loss[c] = loss
        if dist is not None:
            records.dist2[c] = np.where(steps >= s, np.nan, dist[i])
        records.chain_steps += min(s + 1, total)
        if s < total:
            records.diverged[c] = True
            records.diverged_at_step[c] = s
        if acc is not None:
            # MALA runs after the update of draw steps before the last, while the chain is alive.
            ok = (steps < s) & (steps < total - 1) & ~div_steps
            records.mala_accept[c].extend(float(a) for a in acc[i, ok])


class _PairedBaselines:
    """Paired baselines L_m(w*) on each draw's batch, computed many batches per stepper call.

    Draws are queued as batch indices and evaluated at divergence checks once a chunk has
    gathered (so memory stays bounded), for draws up to each chain's divergent step; the
    values stay on the device until finish.
    """

    def __init__(self, evaluator: Any, source: BatchSource, chains: list[int], *, chunk: int) -> None:
        self._evaluator, self._source, self._chains, self._chunk = evaluator, source, chains, chunk
        self._queue: list[tuple[int, int, list[int], torch.Tensor]] = []   # (step, draw, rows, idx)
        self._queued = 0
        self._where: list[tuple[int, int]] = []
        self._values: list[torch.Tensor] = []

    def add(self, step: int, draw: int, rows: list[int], idx: torch.Tensor) -> None:
        self._queue.append((step, draw, rows, idx))
        self._queued += len(rows)

    def flush(self, first_bad: np.ndarray, *, force: bool = False) -> None:
        """Evaluate the queue (all its steps were checked for divergence: first_bad is final)."""
        if not self._queue or (self._queued < self._chunk and not force):
            return
        idx: list[torch.Tensor] = []
        for t, draw, rows, batch_idx in self._queue:
            for j, i in enumerate(rows):
                if t <= first_bad[i]:
                    self._where.append((self._chains[i], draw))
                    idx.append(batch_idx[j])
        self._queue, self._queued = [], 0
        if idx:
            self._values.append(self._evaluator.star_losses(self._source, torch.stack(idx), chunk=self._chunk))

    def finish(self, records: ChainRecords, first_bad: np.ndarray) -> None:
        self.flush(first_bad, force=True)
        if not self._values:
            return
        values = torch.cat(self._values).double().cpu().numpy()
        for (c, d), b in zip(self._where, values, strict=True):
            records.baseline[c, d] = b


def _mala(stepper: Any, batch: Any, flat: torch.Tensor, flat0: torch.Tensor, drift_old: torch.Tensor,
          noise: torch.Tensor, u_old: torch.Tensor, *, nbeta: float, eps: float, gamma: float) -> torch.Tensor:
    """Metropolis acceptance probability of the step just taken, on the same minibatch (on the device)."""
    loss_new, grad_new = stepper.loss_and_grad(flat, batch)
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
        return torch.exp(log_alpha).nan_to_num(0.0)
