"""Loss and gradient of a group of chains' flat parameter vectors.

Sampled parameters live in one flat (chains, D) tensor so the SGLD update is a few fused
whole-tensor ops; the model itself is never written to: torch.func.functional_call swaps
in views of the flat tensor for the sampled parameters and detached w* tensors for the
frozen ones. VectorizedStepper runs all chains as one vmapped forward with one backward
(chains are independent, so d(sum of losses)/d(chain c) is chain c's gradient);
SequentialStepper runs one chain with plain autograd, for models vmap cannot trace or
that do not fit C times in memory.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, vmap
from torch.utils._pytree import tree_map

LossFn = Callable[[nn.Module, Any], torch.Tensor]


class LossModule(nn.Module):
    """Wraps (model, loss_fn) so functional_call can swap parameters under the loss."""

    def __init__(self, model: nn.Module, loss_fn: LossFn) -> None:
        super().__init__()
        self.model = model
        self._loss_fn = loss_fn

    def forward(self, batch: Any) -> torch.Tensor:
        return self._loss_fn(self.model, batch)


@dataclass(frozen=True)
class ParamLayout:
    """Where each sampled parameter sits in the flat vector."""

    names: tuple[str, ...]          # functional_call keys ("model.<name>")
    shapes: tuple[torch.Size, ...]
    sizes: tuple[int, ...]
    dtypes: tuple[torch.dtype, ...]
    dtype: torch.dtype              # dtype of the flat (master) vector

    @property
    def numel(self) -> int:
        return sum(self.sizes)

    def split(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        lead = tuple(flat.shape[:-1])
        out: dict[str, torch.Tensor] = {}
        for name, part, shape, dt in zip(self.names, flat.split(list(self.sizes), dim=-1), self.shapes, self.dtypes):
            view = part.view(lead + tuple(shape))
            out[name] = view if dt == self.dtype else view.to(dt)
        return out


def autocast_ctx(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


class _Stepper:
    def __init__(self, *, module: LossModule, layout: ParamLayout, frozen: dict[str, torch.Tensor],
                 star: dict[str, torch.Tensor], device: torch.device, bf16: bool, star_is_native: bool) -> None:
        self.module = module
        self.layout = layout
        self.frozen = frozen
        self.star = star
        self.device = device
        self.bf16 = bf16
        # When the model's own tensors are w* on this device, the baseline skips functional_call.
        self.star_is_native = star_is_native

        # Tied weights (e.g. GPT-2's lm_head = wte) are passed under every alias once here,
        # so functional_call can skip re-deriving the ties on every call (tie_weights=False).
        aliases: dict[int, list[str]] = {}
        for name, t in [*module.named_parameters(remove_duplicate=False), *module.named_buffers(remove_duplicate=False)]:
            aliases.setdefault(id(t), []).append(name)
        self._aliases = {names[0]: names[1:] for names in aliases.values() if len(names) > 1}
        self._star_full = self._untie(star)
        self._frozen_full = self._untie(frozen)

    def _untie(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = dict(tensors)
        for name, value in tensors.items():
            for alias in self._aliases.get(name, ()):
                out[alias] = value
        return out

    def _call(self, params: dict[str, torch.Tensor], batch: Any) -> torch.Tensor:
        with autocast_ctx(self.device, self.bf16):
            return functional_call(self.module, {**self._untie(params), **self._frozen_full}, (batch,),
                                   tie_weights=False)

    def _call_star(self, batch: Any) -> torch.Tensor:
        with torch.no_grad(), autocast_ctx(self.device, self.bf16):
            if self.star_is_native:
                return self.module(batch)
            return functional_call(self.module, self._star_full, (batch,), tie_weights=False)

    def _loss_pair(self, params: dict[str, torch.Tensor], batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return self._call(params, batch), self._call_star(batch)


class VectorizedStepper(_Stepper):
    """All chains of a group in one vmapped forward/backward."""

    path = "vectorized"

    def batch(self, source: Any, idx: torch.Tensor) -> Any:
        return source.gather(idx)                     # (G, B, ...)

    def loss_and_grad(self, flat: torch.Tensor, batch: Any, *, baseline: bool = False
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Loss and gradient at each row of flat; with baseline, also L_m(w*) on the same batch."""
        x = flat.detach().requires_grad_(True)
        base = None
        with torch.enable_grad():
            if baseline:
                losses, base = vmap(self._loss_pair, in_dims=(0, 0))(self.layout.split(x), batch)
                base = base.detach().float()
            else:
                losses = vmap(self._call, in_dims=(0, 0))(self.layout.split(x), batch)
            if losses.shape != (flat.shape[0],):
                raise RuntimeError(f"vmapped loss has shape {tuple(losses.shape)}, expected ({flat.shape[0]},)")
            (grad,) = torch.autograd.grad(losses.float().sum(), x)
        return losses.detach().float(), grad, base


class SequentialStepper(_Stepper):
    """One chain at a time with plain autograd (works for any model loss_fn can run)."""

    path = "sequential"

    def batch(self, source: Any, idx: torch.Tensor) -> Any:
        return source.gather(idx[0])                  # (B, ...)

    def loss_and_grad(self, flat: torch.Tensor, batch: Any, *, baseline: bool = False
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        x = flat[0].detach().requires_grad_(True)
        with torch.enable_grad():
            loss = self._call(self.layout.split(x), batch)
            (grad,) = torch.autograd.grad(loss.float(), x)
        base = self.loss_at_star(batch) if baseline else None
        return loss.detach().float().reshape(1), grad.unsqueeze(0), base

    def loss_at_star(self, batch: Any) -> torch.Tensor:
        return self._call_star(batch).detach().float().reshape(1)


def to_device(tree: Any, device: torch.device) -> Any:
    return tree_map(lambda t: t.to(device) if isinstance(t, torch.Tensor) else t, tree)
