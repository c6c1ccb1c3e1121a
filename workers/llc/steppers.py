"""Loss and gradient of a group of chains' flat parameter vectors.

Sampled parameters live in one flat (chains, D) tensor so the SGLD update is a few fused
whole-tensor ops; torch.func.functional_call swaps in views of the flat tensor for the
sampled parameters and detached w* tensors for the frozen ones. InPlaceStepper (one chain,
whole tensors) instead makes the model's own parameters views of the flat state, saving
the chain's copy of the weights; the estimator puts the model back at w* afterwards. VectorizedStepper runs all chains as one vmapped forward with one backward
(chains are independent, so d(sum of losses)/d(chain c) is chain c's gradient);
SequentialStepper runs one chain with plain autograd, for models vmap cannot trace or
that do not fit C times in memory. With compile=True the loss (forward, and through
AOTAutograd the backward) of either path runs as a torch.compile'd graph: fused
element-wise kernels instead of one pass over memory per op (the GPT-2 benchmark's step
runs ×1.4 faster on CPU); a model torch.compile cannot handle runs eagerly instead.
"""
from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, vmap
# torch.utils._pytree: the pytree helpers torch.func itself uses; torch 2.13 has no public alias.
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

# Private API, on purpose: torch.func.vmap re-derives in_dims/out_dims pytrees and wraps the
# function on every call, which cost ~30% of a step on small models (benchmarks/README.md);
# calling vmap's own building blocks skips that. Guarded: if a torch version lacks any of them,
# _LEAN_VMAP is False and the public torch.func.vmap runs instead (same results, tested).
try:
    from torch._functorch import vmap as _functorch_vmap

    _LEAN_VMAP = all(hasattr(_functorch_vmap, name) for name in (
        "_add_batch_dim", "_remove_batch_dim", "_vmap_increment_nesting", "_vmap_decrement_nesting",
        "lazy_load_decompositions"))
except ImportError:  # pragma: no cover - other torch versions fall back to torch.func.vmap
    _LEAN_VMAP = False

LossFn = Callable[[nn.Module, Any], torch.Tensor]


class LossModule(nn.Module):
    """Wraps (model, loss_fn) so functional_call can swap parameters under the loss."""

    def __init__(self, model: nn.Module, loss_fn: LossFn) -> None:
        super().__init__()
        self.model = model
        self._loss_fn = loss_fn

    def forward(self, batch: Any, backward: bool = False) -> torch.Tensor:
        """The loss; with backward, also its backward, run while functional_call's parameters are
        still in place (an activation-checkpointed layer reads them again when it recomputes)."""
        loss = self._loss_fn(self.model, batch)
        if backward:
            trace_dtype(loss).backward()
        return loss


@dataclass(frozen=True)
class ParamLayout:
    """Where each sampled parameter sits in the flat vector."""

    names: tuple[str, ...]          # functional_call keys ("model.<name>")
    shapes: tuple[torch.Size, ...]
    sizes: tuple[int, ...]
    dtypes: tuple[torch.dtype, ...]
    dtype: torch.dtype              # dtype of the flat (master) vector
    # Partly sampled parameters (a head's slice of a fused matrix): the flat indices of the
    # sampled entries and w* flattened; None where the whole tensor is sampled.
    index: tuple[torch.Tensor | None, ...] | None = None
    base: tuple[torch.Tensor | None, ...] | None = None

    @property
    def numel(self) -> int:
        return sum(self.sizes)

    def split(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.assemble(flat.split(list(self.sizes), dim=-1), lead=tuple(flat.shape[:-1]))

    def assemble(self, parts: Any, *, lead: tuple[int, ...] = ()) -> dict[str, torch.Tensor]:
        """Parameters from their flat parts (in layout order), each (*lead, size)."""
        out: dict[str, torch.Tensor] = {}
        for i, (name, part, shape, dt) in enumerate(zip(self.names, parts, self.shapes, self.dtypes, strict=True)):
            part = part if dt == self.dtype else part.to(dt)
            idx = self.index[i] if self.index is not None else None
            if idx is not None:   # w* with the sampled entries scattered in (differentiable in part)
                base = self.base[i]
                part = base.expand(*lead, base.numel()).index_copy(len(lead), idx, part)
            out[name] = part.view(lead + tuple(shape))
        return out


def trace_dtype(loss: torch.Tensor) -> torch.Tensor:
    """Losses as recorded: float64 stays float64, everything else becomes float32."""
    return loss if loss.dtype == torch.float64 else loss.float()


class _Stepper:
    def __init__(self, *, module: LossModule, layout: ParamLayout, frozen: dict[str, torch.Tensor],
                 star: dict[str, torch.Tensor], device: torch.device, star_is_native: bool,
                 compile: bool = False) -> None:
        self.module = module
        self.layout = layout
        self.frozen = frozen
        self.star = star
        self.device = device
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
        self._compiled: Callable[[torch.Tensor, Any], torch.Tensor] | None = None
        self._compiled_ran = False
        self._first_compiled_call = False     # set by _loss, cleared (and timed) by loss_and_grad
        self._grad_buf: torch.Tensor | None = None     # SequentialStepper's reused gradient buffer
        self.compile_error: str | None = None
        self.compile_s = 0.0
        self.backward_in_call = False     # activation checkpointing: see LossModule.forward
        if compile:
            self.enable_compile()

    def drop_grad_buffer(self) -> None:
        """Free the reused gradient buffer (a probe's): the chains allocate their own."""
        self._grad_buf = None

    def enable_compile(self) -> None:
        """Run the loss as a torch.compile'd graph from the next step on (compiled at first use)."""
        if self._compiled is None and self.compile_error is None:
            self._compiled = torch.compile(self._traced_loss, dynamic=False)

    @property
    def compiled(self) -> bool:
        """Whether the loss runs as a compiled graph (False after a compile failure)."""
        return self._compiled is not None

    def _eager_loss(self, x: torch.Tensor, batch: Any) -> torch.Tensor:
        raise NotImplementedError

    def _traced_loss(self, x: torch.Tensor, batch: Any) -> torch.Tensor:
        """What torch.compile traces (the eager loss by default)."""
        return self._eager_loss(x, batch)

    def _loss(self, x: torch.Tensor, batch: Any) -> torch.Tensor:
        """The loss at x on batch: compiled when asked and possible, else eager."""
        if self._compiled is None:
            return self._eager_loss(x, batch)
        if self._compiled_ran:
            return self._compiled(x, batch)
        try:
            out = self._compiled(x, batch)
        except Exception as exc:  # noqa: BLE001 - a model dynamo/inductor cannot compile runs eagerly
            self._give_up_compiling(exc)
            return self._eager_loss(x, batch)
        self._compiled_ran = self._first_compiled_call = True
        return out

    def _give_up_compiling(self, exc: Exception) -> None:
        self._compiled = None
        self._first_compiled_call = False
        self.compile_error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
        warnings.warn(f"torch.compile failed, running the SGLD steps eagerly ({self.compile_error})", stacklevel=3)

    def _loss_and_grad_timed(self, fn: Callable[[], tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Run fn; the first compiled call's whole wall time (forward and the backward that
        AOTAutograd compiles lazily at its first use) is the compile time."""
        if self._compiled is None or self._compiled_ran:
            return fn()
        started = time.perf_counter()
        try:
            out = fn()
        except Exception as exc:
            if not self._first_compiled_call:     # an eager failure (or already fell back): the caller's error
                raise
            self._give_up_compiling(exc)          # the backward's lazy compile failed: run eagerly
            return fn()
        if self._first_compiled_call:
            self._first_compiled_call = False
            self.compile_s = time.perf_counter() - started
        return out

    def chain_start(self, flat0: torch.Tensor, group: int) -> torch.Tensor:
        """A group's chain state at w*: `group` fresh rows."""
        return flat0.unsqueeze(0).repeat(group, 1)

    def _untie(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = dict(tensors)
        for name, value in tensors.items():
            for alias in self._aliases.get(name, ()):
                out[alias] = value
        return out

    def _call(self, params: dict[str, torch.Tensor], batch: Any, backward: bool = False) -> torch.Tensor:
        return functional_call(self.module, {**self._untie(params), **self._frozen_full}, (batch,),
                               {"backward": True} if backward else None, tie_weights=False)

    def _call_star(self, batch: Any) -> torch.Tensor:
        with torch.no_grad():
            if self.star_is_native:
                return self.module(batch)
            return functional_call(self.module, self._star_full, (batch,), tie_weights=False)


class VectorizedStepper(_Stepper):
    """All chains of a group in one vmapped forward/backward."""

    path = "vectorized"

    def batch(self, source: Any, idx: torch.Tensor) -> Any:
        return source.gather(idx)                     # (G, B, ...)

    def _vmap_loss(self, x: torch.Tensor, batch: Any) -> torch.Tensor:
        """vmap(lambda row, b: loss at row on b)(x, batch), both batched along dim 0.

        Equivalent to torch.func.vmap(..., in_dims=(0, 0)) with randomness="error"; calls its
        building blocks directly, skipping the pytree work on in_dims/out_dims per call.
        """
        if not _LEAN_VMAP:
            return vmap(self._call, in_dims=(0, 0))(self.layout.split(x), batch)
        size = x.shape[0]
        leaves, spec = tree_flatten(batch)
        if not all(isinstance(t, torch.Tensor) and t.ndim >= 1 and t.shape[0] == size for t in leaves):
            return vmap(self._call, in_dims=(0, 0))(self.layout.split(x), batch)
        fv = _functorch_vmap
        fv.lazy_load_decompositions()
        level = fv._vmap_increment_nesting(size, "error")
        try:
            row = fv._add_batch_dim(x, 0, level)
            b = tree_unflatten([fv._add_batch_dim(t, 0, level) for t in leaves], spec)
            out = self._call(self.layout.split(row), b)
            if not isinstance(out, torch.Tensor):
                raise ValueError(f"loss_fn must return a tensor, got {type(out).__name__}")
            return fv._remove_batch_dim(out, level, size, 0)
        finally:
            fv._vmap_decrement_nesting()

    def _eager_loss(self, x: torch.Tensor, batch: Any) -> torch.Tensor:
        return self._vmap_loss(x, batch)

    def _traced_loss(self, x: torch.Tensor, batch: Any) -> torch.Tensor:
        # dynamo traces torch.func.vmap, not vmap's private building blocks.
        return vmap(lambda row, b: self._call(self.layout.split(row), b), in_dims=(0, 0))(x, batch)

    def loss_and_grad(self, flat: torch.Tensor, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss and gradient at each row of flat."""
        return self._loss_and_grad_timed(lambda: self._vmapped_loss_and_grad(flat, batch))

    def _vmapped_loss_and_grad(self, flat: torch.Tensor, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        x = flat.detach().requires_grad_(True)
        with torch.enable_grad():
            losses = self._loss(x, batch)
            if losses.shape != (flat.shape[0],):
                raise RuntimeError(f"vmapped loss has shape {tuple(losses.shape)}, expected ({flat.shape[0]},)")
            (grad,) = torch.autograd.grad(trace_dtype(losses).sum(), x)
        return trace_dtype(losses.detach()), grad

    def star_losses(self, source: Any, idx: torch.Tensor, *, chunk: int) -> torch.Tensor:
        """L_m(w*) on each row of idx (K, B): one vmapped no-grad forward per `chunk` batches."""
        star = vmap(self._call_star, in_dims=(0,))
        return torch.cat([trace_dtype(star(source.gather(idx[i:i + chunk])).detach())
                          for i in range(0, idx.shape[0], chunk)])


class SequentialStepper(_Stepper):
    """One chain at a time with plain autograd (works for any model loss_fn can run)."""

    path = "sequential"

    def batch(self, source: Any, idx: torch.Tensor) -> Any:
        return source.gather(idx[0])                  # (B, ...)

    def _eager_loss(self, x: torch.Tensor, batch: Any) -> torch.Tensor:
        return self._call(self.layout.split(x), batch)

    def loss_and_grad(self, flat: torch.Tensor, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return self._loss_and_grad_timed(lambda: self._chain_loss_and_grad(flat, batch))

    def _chain_loss_and_grad(self, flat: torch.Tensor, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if self._compiled is None:
            return self._leaf_loss_and_grad(flat, batch)
        x = flat[0].detach().requires_grad_(True)
        with torch.enable_grad():
            loss = self._loss(x, batch)
            (grad,) = torch.autograd.grad(trace_dtype(loss), x)
        return trace_dtype(loss.detach()).reshape(1), grad.unsqueeze(0)

    def _leaf_loss_and_grad(self, flat: torch.Tensor, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Eager: each parameter's part is a leaf whose .grad is its slice of one reused flat buffer,
        so autograd adds every gradient there as it is produced and frees it (a gradient w.r.t. the
        flat vector would keep all of them until one concatenation into a new D-sized tensor).
        The returned gradient is that buffer: valid until the next call."""
        buf = self._grad_buf
        if buf is None or buf.shape != flat.shape[1:] or buf.dtype != flat.dtype or buf.device != flat.device:
            buf = self._grad_buf = torch.zeros_like(flat[0])
        else:
            buf.zero_()
        sizes = list(self.layout.sizes)
        leaves = [p.detach().requires_grad_(True) for p in flat[0].split(sizes)]
        for leaf, g in zip(leaves, buf.split(sizes), strict=True):
            leaf.grad = g
        with torch.enable_grad():
            loss = self._call(self.layout.assemble(leaves), batch, backward=self.backward_in_call)
            if not self.backward_in_call:
                trace_dtype(loss).backward()
        return trace_dtype(loss.detach()).reshape(1), buf.unsqueeze(0)

    def loss_at_star(self, batch: Any) -> torch.Tensor:
        return trace_dtype(self._call_star(batch).detach()).reshape(1)

    def star_losses(self, source: Any, idx: torch.Tensor, *, chunk: int) -> torch.Tensor:
        """L_m(w*) on each row of idx (K, B), one plain forward per batch."""
        return torch.cat([self.loss_at_star(source.gather(row)) for row in idx])



class InPlaceStepper(SequentialStepper):
    """One chain at a time whose state *is* the model's own sampled parameters.

    The estimator has rebound every sampled parameter (whole tensors only) to a view of one flat
    buffer (adopt_parameters), which is this chain's (1, D) state: SGLD updates the model in
    place, the forward runs the model as it is (no functional_call), and autograd adds each
    gradient into its slice of one reused buffer (the parameters' .grad). State beyond the weights:
    w* and the gradient, so a big model's `all` job needs about three model copies plus
    activations. Micro-batches (gradient accumulation) add into the same .grad buffer.
    release() puts w* back (and the parameters' requires_grad and .grad)."""

    def __init__(self, *, chain: torch.Tensor, params: list[nn.Parameter], micro_batches: int = 1,
                 **common: Any) -> None:
        super().__init__(**common)
        self.chain = chain                       # (D,), the sampled parameters' storage
        self.params = params                     # sampled parameters, in layout order
        self.parts = micro_batches
        sampled = {id(p) for p in params}
        self._others = [p for p in self.module.parameters() if id(p) not in sampled]
        self._saved = [(p, p.requires_grad, p.grad) for p in [*params, *self._others]]
        buf = self._grad_buf = torch.zeros_like(chain)
        for p, g in zip(params, buf.split(list(self.layout.sizes)), strict=True):
            p.requires_grad_(True)
            p.grad = g.view(p.shape)
        for p in self._others:
            p.requires_grad_(False)

    def chain_start(self, flat0: torch.Tensor, group: int) -> torch.Tensor:
        if group != 1:
            raise ValueError("InPlaceStepper runs one chain at a time")
        return self.chain.copy_(flat0).unsqueeze(0)

    def loss_and_grad(self, flat: torch.Tensor, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if flat.data_ptr() != self.chain.data_ptr():
            raise RuntimeError("InPlaceStepper steps only its own chain (the model's parameters)")
        buf = self._grad_buf
        assert buf is not None
        buf.zero_()
        total: torch.Tensor | None = None
        with torch.enable_grad():
            for k in range(self.parts):
                part = batch if self.parts == 1 else tree_map(
                    lambda t: t.tensor_split(self.parts, dim=0)[k] if isinstance(t, torch.Tensor) else t, batch)
                loss = trace_dtype(self.module(part))
                loss.backward()
                total = loss.detach() if total is None else total.add_(loss.detach())
        assert total is not None
        if self.parts > 1:
            total.div_(self.parts)
            buf.div_(self.parts)
        return total.reshape(1), buf.unsqueeze(0)

    def release(self, flat0: torch.Tensor) -> None:
        """The model back at w*, with its parameters' requires_grad and .grad as they were."""
        with torch.no_grad():
            self.chain.copy_(flat0)
        for p, req, grad in self._saved:
            p.grad = grad
            p.requires_grad_(req)
        self._grad_buf = None


def adopt_parameters(params: list[nn.Parameter], flat0: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Rebind each parameter to its slice of one new flat buffer holding w* (a copy of flat0) and
    return the buffer: the parameters' old storages are freed when nothing else holds them, so the
    buffer can be an in-place chain's state (InPlaceStepper) at no extra copy of the weights."""
    chain = flat0.clone()
    with torch.no_grad():
        for p, part in zip(params, chain.split(sizes), strict=True):
            p.data = part.view(p.shape)
    return chain
