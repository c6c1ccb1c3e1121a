"""What lambda_hat subtracts: L_n(w*), the mean of K minibatches, or the paired L_m(w*).

The paired baseline L_m(w*) does not depend on the chain state, only on the draw's batch.
When loss_fn is a mean of per-item losses (the usual case), L_m(w*) on any batch is the
mean of that batch's per-item losses at w*, so one pass over the dataset (n items) gives
every draw's baseline by table lookup instead of chains x draws x batch_size items of
forward passes (×12 fewer on the GPT-2 benchmark). The table is used only when that pass
is cheaper and it reproduces directly computed L_m(w*) on check batches; otherwise each
draw's batch is evaluated at w* as before. The check costs at most 1/32 of the direct work.
"""
from __future__ import annotations

import warnings
from typing import Any

import torch

from .config import SGLDConfig
from .data import BatchSource, IndexStream, chain_generator

# |table mean - direct L_m(w*)| must stay below this times (|L_m(w*)| + 1) on the check
# batches: float32 per-item means agree with the batch mean to ~1e-7 relative; a loss that
# is not a per-item mean (token-weighted with padding, a sum, a max) misses by far more.
_TABLE_TOL = 2e-5


class ItemLossTable:
    """Per-item losses at w*: paired baselines by lookup (same interface as a stepper's star_losses)."""

    def __init__(self, losses: torch.Tensor) -> None:
        self.losses = losses                  # (n,) float64 on the device

    def star_losses(self, source: Any, idx: torch.Tensor, *, chunk: int) -> torch.Tensor:  # noqa: ARG002
        """L_m(w*) for each row of idx (K, B): the mean of the rows' per-item losses."""
        return self.losses[idx.to(self.losses.device)].mean(dim=-1)


def item_loss_table(*, vec_stepper: Any, seq_stepper: Any, source: BatchSource, n: int, cfg: SGLDConfig,
                    probe_loss: torch.Tensor) -> tuple[ItemLossTable | None, str]:
    """The per-item loss table at w*, or None (and why) when direct paired baselines are used."""
    direct_batches = cfg.num_chains * cfg.num_draws
    checks = _check_batches(direct_batches)
    if n + checks * cfg.batch_size >= direct_batches * cfg.batch_size:
        return None, (f"direct: the dataset ({n} items) is not smaller than the draws' batches "
                      f"({direct_batches * cfg.batch_size} items)")
    if vec_stepper is None:
        return None, "direct: per-item losses need a vmappable loss_fn"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")       # vmap's "no batching rule" performance notes
            per_item = vec_stepper.star_losses(source, torch.arange(n).view(n, 1), chunk=cfg.batch_size)
    except Exception as exc:  # noqa: BLE001 - any failure means "evaluate each draw's batch"
        return None, f"direct: per-item losses failed ({type(exc).__name__})"
    per_item = per_item.double()
    if per_item.shape != (n,) or not torch.isfinite(per_item).all():
        return None, "direct: per-item losses are not finite"
    table = ItemLossTable(per_item)
    # Check batches, evaluated directly: the probe (items 0..B-1) and seeded random batches, as
    # many as 1/32 of the draws (at most 32), so that a loss which is a per-item mean on most
    # batches but not all (token-weighted with a few padded items) is caught with high probability.
    stream = IndexStream(n, cfg.batch_size, chain_generator(cfg.seed, cfg.num_chains, 3))
    idx = torch.stack([torch.arange(cfg.batch_size), *[stream.next() for _ in range(checks - 1)]])
    with torch.no_grad():
        direct = torch.cat([probe_loss.reshape(1).double(),
                            *[seq_stepper.loss_at_star(source.gather(row)).double() for row in idx[1:]]])
    looked_up = table.star_losses(source, idx, chunk=checks).cpu()
    gap = float((looked_up - direct.cpu()).abs().max())
    scale = float(direct.abs().max()) + 1.0
    if not gap <= _TABLE_TOL * scale:
        return None, f"direct: loss_fn is not a mean of per-item losses (table misses by {gap:.2e})"
    return table, "item_table"


def _check_batches(direct_batches: int) -> int:
    return max(2, min(32, direct_batches // 32))


def constant_baseline(cfg: SGLDConfig, seq_stepper: Any, source: BatchSource, n: int) -> float | None:
    """L_n(w*) over the whole dataset ("full") or the mean of K seeded minibatches (int K)."""
    if cfg.baseline == "paired":
        return None
    with torch.no_grad():
        if cfg.baseline == "full":
            total, count = 0.0, 0
            for start in range(0, n, cfg.batch_size):
                stop = min(n, start + cfg.batch_size)
                total += float(seq_stepper.loss_at_star(source.range(start, stop))) * (stop - start)
                count += stop - start
            return total / count
        stream = IndexStream(n, cfg.batch_size, chain_generator(cfg.seed, cfg.num_chains, 2))
        k = int(cfg.baseline)
        return sum(float(seq_stepper.loss_at_star(source.gather(stream.next()))) for _ in range(k)) / k
