"""The reference SGLD loop: the method as docs/estimator.md states it, written plainly.

One chain at a time, one step at a time, the model's own loss through
torch.func.functional_call, the update from sgld.SGLDStep, the paired baseline L_m(w*) on the
draw's own batch. No vmap, no compile, no prefetching, no batched baselines, no divergence
windows: slow, and the yardstick the fast paths (vectorized, sequential, compiled) are held
to on the same seed (tests/workers/llc/test_llc_reference.py). Chain c draws its batches and
noise from the same generators as the fast paths (data.chain_generator streams 0 and 1).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call
from torch.utils.data import Dataset, default_collate

from .config import SGLDConfig
from .data import IndexStream, chain_generator
from .sgld import SGLDStep
from .steppers import LossFn, LossModule


@dataclass(frozen=True)
class ReferenceRun:
    llc_per_chain: list[float]
    loss_trace: np.ndarray        # (chains, draws) L_m(w_t) at the draws
    baseline_trace: np.ndarray    # (chains, draws) L_m(w*) on the same batches
    nbeta: float
    exact_trace: np.ndarray | None = None   # (chains, draws) L_n(w_t) over the whole dataset (exact=True)
    exact_wstar: float | None = None        # L_n(w*)


def reference_llc(model: nn.Module, loss_fn: LossFn, dataset: Dataset, *, config: SGLDConfig,
                  exact: bool = False) -> ReferenceRun:
    """lambda_hat_chain = nbeta * mean over draws of (L_m(w_t) - L_m(w*)), paired baseline only.

    exact=True also records the full-data loss L_n(w_t) at every draw (and L_n(w*)): the
    textbook estimator the minibatch one must agree with in expectation."""
    cfg = config
    if cfg.epsilon == "auto" or cfg.baseline != "paired":
        raise ValueError("reference_llc runs a fixed epsilon with the paired baseline; set epsilon and baseline='paired'.")
    n = len(dataset)  # type: ignore[arg-type]
    nbeta = float(cfg.nbeta) if cfg.nbeta is not None else n / math.log(n)
    step = SGLDStep(epsilon=float(cfg.epsilon), gamma=cfg.gamma, nbeta=nbeta, method=cfg.method,
                    rmsprop_alpha=cfg.rmsprop_alpha)
    names = [k for k, p in model.named_parameters() if p.is_floating_point()]
    star = {k: p.detach() for k, p in model.named_parameters()}
    dtype = torch.float64 if any(star[k].dtype == torch.float64 for k in names) else torch.float32
    w_star = torch.cat([star[k].reshape(-1).to(dtype) for k in names])

    module = LossModule(model, loss_fn)

    def loss_at(w: torch.Tensor, batch: object) -> torch.Tensor:
        """loss_fn with the model's sampled parameters replaced by the flat vector w."""
        params, offset = {}, 0
        for k in names:
            size = star[k].numel()
            params[f"model.{k}"] = w[offset:offset + size].view(star[k].shape).to(star[k].dtype)
            offset += size
        return functional_call(module, params, (batch,))

    everything = default_collate([dataset[i] for i in range(n)]) if exact else None
    was_training = model.training
    model.eval()
    try:
        exact_trace = np.full((cfg.num_chains, cfg.num_draws), np.nan) if exact else None
        with torch.no_grad():
            exact_wstar = float(loss_fn(model, everything)) if exact else None
        losses = np.full((cfg.num_chains, cfg.num_draws), np.nan)
        baselines = np.full((cfg.num_chains, cfg.num_draws), np.nan)
        for c in range(cfg.num_chains):
            batches = IndexStream(n, cfg.batch_size, chain_generator(cfg.seed, c, 0))
            noise_gen = chain_generator(cfg.seed, c, 1)
            w = w_star.clone()
            state: dict[str, torch.Tensor] = {}
            for t in range(cfg.num_steps):
                batch = default_collate([dataset[i] for i in batches.next().tolist()])
                x = w.detach().requires_grad_(True)
                loss = loss_at(x, batch)
                (grad,) = torch.autograd.grad(loss, x)
                draw, rem = divmod(t - cfg.num_burnin, cfg.steps_between_draws)
                if draw >= 0 and rem == 0:
                    losses[c, draw] = float(loss.detach())
                    with torch.no_grad():
                        baselines[c, draw] = float(loss_fn(model, batch))
                        if exact_trace is not None:
                            exact_trace[c, draw] = float(loss_at(w, everything))
                noise = torch.randn(w.shape, generator=noise_gen, dtype=dtype)
                with torch.no_grad():
                    w_rows = w.unsqueeze(0)
                    step.apply(w_rows, w_star.unsqueeze(0), grad.unsqueeze(0), noise.unsqueeze(0), state)
                    w = w_rows[0]
    finally:
        model.train(was_training)
    per_chain = (nbeta * (losses - baselines).mean(axis=1)).tolist()
    return ReferenceRun(llc_per_chain=per_chain, loss_trace=losses, baseline_trace=baselines, nbeta=nbeta,
                        exact_trace=exact_trace, exact_wstar=exact_wstar)
