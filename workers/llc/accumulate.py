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
    """Wraps a stepper; `loss_and_grad` runs `parts` micro-batches one after another. The gradient
    it returns is a buffer it reuses: valid until the next call."""

    def __init__(self, inner: Any, parts: int) -> None:
        self.inner = inner
        self.parts = parts
        # Items sit on dim 0 of a sequential batch (B, ...), dim 1 of a vectorized one (G, B, ...).
        self._dim = 1 if inner.path == "vectorized" else 0
        self._sum: torch.Tensor | None = None

    def __getattr__(self, name: str) -> Any:        # path, layout, compiled, star_losses, ...
        return getattr(self.inner, name)

    def loss_and_grad(self, flat: torch.Tensor, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        loss_sum: torch.Tensor | None = None
        for k in range(self.parts):
            part = tree_map(lambda t: t.tensor_split(self.parts, dim=self._dim)[k] if isinstance(t, torch.Tensor) else t,
                            batch)
            loss, grad = self.inner.loss_and_grad(flat, part)
            loss_sum = loss if loss_sum is None else loss_sum.add_(loss)
            if k == 0:
                # One reused sum buffer (the inner stepper may reuse its gradient buffer on the next
                # call, and a fresh sum per step would keep two alive while the next one is formed).
                if self._sum is None or self._sum.shape != grad.shape or self._sum.dtype != grad.dtype:
                    self._sum = torch.empty_like(grad)
                self._sum.copy_(grad)
            else:
                self._sum.add_(grad)
        assert loss_sum is not None and self._sum is not None
        return loss_sum.div_(self.parts), self._sum.div_(self.parts)
