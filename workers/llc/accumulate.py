"""Gradient accumulation: one SGLD step's minibatch run as equal micro-batches.

The memory plan (memory.py) asks for it when one chain's activations for the whole batch do
not fit. For a loss that is a mean of per-item losses (the causal LM loss over equal-length
sequences), the mean of the micro-batch means and of their gradients is exactly the batch's
(up to float rounding), so the chain is the same chain; only peak memory changes.
"""
from __future__ import annotations

from typing import Any

import torch
from torch.utils._pytree import tree_map


class AccumulatingStepper:
    """Wraps a stepper; `loss_and_grad` runs `parts` micro-batches one after another."""

    def __init__(self, inner: Any, parts: int) -> None:
        self.inner = inner
        self.parts = parts
        # Items sit on dim 0 of a sequential batch (B, ...), dim 1 of a vectorized one (G, B, ...).
        self._dim = 1 if inner.path == "vectorized" else 0

    def __getattr__(self, name: str) -> Any:        # path, layout, compiled, star_losses, ...
        return getattr(self.inner, name)

    def loss_and_grad(self, flat: torch.Tensor, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        loss_sum: torch.Tensor | None = None
        grad_sum: torch.Tensor | None = None
        for k in range(self.parts):
            part = tree_map(lambda t: t.tensor_split(self.parts, dim=self._dim)[k] if isinstance(t, torch.Tensor) else t,
                            batch)
            loss, grad = self.inner.loss_and_grad(flat, part)
            loss_sum = loss if loss_sum is None else loss_sum.add_(loss)
            # clone: a stepper may hand back a buffer it reuses on the next call
            grad_sum = grad.clone() if grad_sum is None else grad_sum.add_(grad)
        assert loss_sum is not None and grad_sum is not None
        return loss_sum.div_(self.parts), grad_sum.div_(self.parts)
