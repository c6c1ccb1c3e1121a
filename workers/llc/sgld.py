"""The SGLD update, written once as the docs state it; every path (and the reference loop) calls it.

    sgld:          w <- w - (eps/2) (nbeta grad L_m(w) + gamma (w - w*)) + N(0, eps I)
    rmsprop_sgld:  V <- alpha V + (1 - alpha) g^2   (g = grad L_m(w); V starts at g^2 of step 0)
                   G  = 1 / (sqrt(V) + delta)
                   w <- w - (eps/2) G (nbeta g + gamma (w - w*)) + N(0, eps G)

rmsprop_sgld is preconditioned SGLD (Li et al. 2016), as devinterp 2 offers it: each
coordinate steps in units of its own gradient scale, so one eps suits weights whose
curvatures differ by orders of magnitude. Its G drifts while V adapts, so it is not an
exact sampler of the tempered posterior; it is validated on known lambdas like plain SGLD.
The state is a (chains, D) tensor; noise is passed in so callers keep each chain's own generator.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

METHODS = ("sgld", "rmsprop_sgld")


@dataclass(frozen=True)
class SGLDStep:
    """One update of every row (chain) of a flat (chains, D) parameter tensor."""

    epsilon: float
    gamma: float
    nbeta: float
    method: str = "sgld"
    rmsprop_alpha: float = 0.99
    rmsprop_delta: float = 1e-8

    def drift(self, flat: torch.Tensor, flat0: torch.Tensor, grad: torch.Tensor,
              scratch: torch.Tensor | None = None) -> torch.Tensor:
        """nbeta grad L_m(w) + gamma (w - w*): the gradient of the localized tempered potential.

        With `scratch` (a (chains, k) buffer) grad is overwritten with the drift and the offset is
        formed k columns at a time there: the same values without two fresh (chains, D) tensors
        per step (page faults on a 70M-parameter model cost as much as the update)."""
        if scratch is None:
            return grad.to(flat.dtype).mul(self.nbeta).add_(flat - flat0, alpha=self.gamma)
        drift = grad.to(flat.dtype).mul_(self.nbeta)
        size, k = flat.shape[-1], scratch.shape[-1]
        for i in range(0, size, k):
            j = min(i + k, size)
            offset = torch.sub(flat[..., i:j], flat0[i:j], out=scratch[..., :j - i])
            drift[..., i:j].add_(offset, alpha=self.gamma)
        return drift

    def apply_in_chunks(self, flat: torch.Tensor, flat0: torch.Tensor, grad: torch.Tensor,
                        gens: list[torch.Generator], *, chunk: int, scratch: torch.Tensor) -> torch.Tensor:
        """apply (plain SGLD) with each row's noise drawn `chunk` columns at a time from its generator,
        the whole update done chunk by chunk while the chunk is in cache: no (chains, D) noise buffer
        and one pass over memory instead of six. Same values as apply with
        torch.randn(D, generator=g) per row on CPU, where randn fills 16 values at a time from the
        generator's stream, so chunks of a multiple of 16 (the tail merged into the last one when
        shorter than 16) continue one stream (tests/workers/llc/test_llc_sgld_update.py). grad is
        consumed (it becomes the drift, which is returned); scratch is a (chains, >= 2 chunk) buffer."""
        if self.method != "sgld" or chunk % 16:
            raise ValueError("apply_in_chunks is plain SGLD with chunks of a multiple of 16 columns")
        drift = grad if grad.dtype == flat.dtype else grad.to(flat.dtype)
        size = flat.shape[-1]
        offset, noise = scratch[:, :chunk], scratch[:, chunk:2 * chunk]
        i = 0
        while i < size:
            j = size if size - (i + chunk) < 16 else i + chunk
            if j - i > chunk:                    # the merged tail: fresh buffers for it alone
                offset, noise = flat.new_empty(flat.shape[0], j - i), flat.new_empty(flat.shape[0], j - i)
            w, d = flat[:, i:j], drift[:, i:j]
            o, z = offset[:, :j - i], noise[:, :j - i]
            d.mul_(self.nbeta).add_(torch.sub(w, flat0[i:j], out=o), alpha=self.gamma)
            for row, g in zip(z, gens, strict=True):
                torch.randn(row.shape, generator=g, device=flat.device, dtype=flat.dtype, out=row)
            w.add_(d, alpha=-0.5 * self.epsilon).add_(z, alpha=math.sqrt(self.epsilon))
            i = j
        return drift

    def preconditioner(self, state: dict[str, torch.Tensor], grad: torch.Tensor) -> torch.Tensor | None:
        """Update the RMSProp average in `state` with grad and return G (None for plain SGLD)."""
        if self.method == "sgld":
            return None
        g2 = grad.to(torch.float64 if grad.dtype == torch.float64 else torch.float32).square()
        v = state.get("v")
        if v is None or v.shape != g2.shape:
            v = g2
        else:
            v = v.mul(self.rmsprop_alpha).add_(g2, alpha=1.0 - self.rmsprop_alpha)
        state["v"] = v
        return 1.0 / (v.sqrt() + self.rmsprop_delta)

    def apply(self, flat: torch.Tensor, flat0: torch.Tensor, grad: torch.Tensor, noise: torch.Tensor,
              state: dict[str, torch.Tensor], scratch: torch.Tensor | None = None) -> torch.Tensor:
        """Move flat in place by one step; noise ~ N(0, I) of flat's shape. Returns the drift.
        scratch: see drift (grad is then consumed)."""
        precond = self.preconditioner(state, grad)
        drift = self.drift(flat, flat0, grad, scratch)
        if precond is None:
            flat.add_(drift, alpha=-0.5 * self.epsilon).add_(noise, alpha=math.sqrt(self.epsilon))
        else:
            p = precond.to(flat.dtype)
            flat.addcmul_(p, drift, value=-0.5 * self.epsilon).addcmul_(p.sqrt(), noise, value=math.sqrt(self.epsilon))
        return drift

    def select(self, state: dict[str, torch.Tensor], keep: torch.Tensor) -> None:
        """Keep only the rows `keep` of the state (chains dropped after diverging)."""
        for k, v in list(state.items()):
            state[k] = v[keep]
