"""Memory planning: will this estimate fit its device, and how must it run to fit?

Before any SGLD step the estimator adds up weights, the sampled entries' chain state (per
chain: the chain's copy, its gradient, noise and drift, plus one shared copy of w*) and the
activations one chain's forward saves for its backward (measured, not guessed: a probe
forward+backward on one item under saved-tensor hooks, scaled by the batch), then picks the
cheapest way to fit a budget: all chains vectorized, chunks of chains, one chain at a time,
then gradient accumulation over micro-batches. A job that cannot fit even one chain on one
item is refused with one sentence naming the knob that would make it fit.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

# Floats of sampled state per chain in a group: the chain's copy, its gradient, the reused noise
# buffer; vectorized groups also hold the per-parameter gradients the gradient is concatenated
# from (one chain at a time, autograd adds each into a reused buffer as it is produced).
_STATE_COPIES_PER_CHAIN = 4
_STATE_COPIES_ONE_CHAIN = 3
# Backward keeps the saved activations alive while it builds their gradients; peak measured
# on the GPT-NeoX benchmark (benchmarks/large.py, 70M, `all` and one head, 2 and 4 items per
# micro-batch) was saved x ~1.0 plus three copies of the largest saved tensor (the
# log-probabilities, their gradient, the logits' gradient, fp32) plus, one chain at a time,
# the largest sampled parameter's gradient, which autograd forms whole before adding it into
# the chain's gradient buffer (the 50k x 512 unembedding, formed while the logits' gradient lives).
_LARGEST_COPIES = 3


class MemoryPlanError(ValueError):
    """The estimate cannot fit the device's memory however it runs."""


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of one estimate's parts (see module docstring)."""

    weights: int                # parameters + buffers, resident once
    sampled: int                # sampled entries, in the master dtype (one copy)
    activations_per_item: int   # saved for backward, one chain, one batch item
    largest_per_item: int       # the largest single saved tensor per item (logits, usually)
    largest_param: int = 0      # bytes of the largest (partly) sampled parameter tensor
    # One chain at a time can run in place (steppers.InPlaceStepper: the chain is the model's own
    # parameters, micro-batches add into the same gradient): state is then w* and the gradient.
    in_place: bool = False
    # The CPU update draws noise in chunks (sgld.SGLDStep.apply_in_chunks): no noise buffer.
    chunked_noise: bool = False
    # A compiled step returns the gradient w.r.t. the flat vector: one chain at a time then also
    # holds the per-parameter gradients it is concatenated from (as vectorized groups do).
    compiled: bool = False

    def peak(self, *, chains: int, batch: int, accumulate: bool = False) -> int:
        """Peak bytes with `chains` chains stepping together on micro-batches of `batch` items
        (accumulate: gradients summed over micro-batches, one more copy per chain unless in place)."""
        if chains == 1 and self.in_place:
            copies = 1                          # the gradient (the chain is the weights)
        elif chains == 1:
            copies = (_STATE_COPIES_PER_CHAIN if self.compiled else _STATE_COPIES_ONE_CHAIN) - \
                (1 if self.chunked_noise else 0)
        else:
            copies = (_STATE_COPIES_PER_CHAIN - (1 if self.chunked_noise else 0)) * chains
        extra = chains if accumulate and not (chains == 1 and self.in_place) else 0
        state = self.sampled * (1 + copies + extra)
        acts = chains * batch * (self.activations_per_item + _LARGEST_COPIES * self.largest_per_item)
        # (vectorized groups: the per-parameter gradients are in their state copies)
        return self.weights + state + acts + (self.largest_param if chains == 1 else 0)


@dataclass(frozen=True)
class MemoryPlan:
    """How the chains run: groups of `chains_per_group` (vectorized when > 1), each step's batch in
    `micro_batches` parts (gradient accumulation)."""

    chains_per_group: int
    micro_batches: int
    peak_bytes: int
    budget_bytes: int
    estimate: MemoryEstimate

    def describe(self) -> str:
        how = "all chains together" if self.chains_per_group > 1 else "one chain at a time"
        if self.micro_batches > 1:
            how += f", batch in {self.micro_batches} micro-batches"
        return f"{how}: ~{gib(self.peak_bytes)} of {gib(self.budget_bytes)}"


def gib(n: int | float) -> str:
    return f"{n / 2**30:.2f} GiB"


def free_memory(device: torch.device) -> int:
    """Memory a job on `device` may still take: free GPU memory, or host memory available to this
    process (MemAvailable, capped by the container's cgroup limit)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    avail = []
    try:
        with open("/proc/meminfo") as f:
            avail += [int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")]
    except OSError:
        pass
    try:
        with open("/sys/fs/cgroup/memory.max") as f_max, open("/sys/fs/cgroup/memory.current") as f_cur:
            limit = f_max.read().strip()
            if limit != "max":
                avail.append(int(limit) - int(f_cur.read().strip()))
    except (OSError, ValueError):
        pass
    if not avail:
        try:
            avail.append(int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")))
        except (ValueError, OSError, AttributeError):
            return 1 << 34
    return max(0, min(avail))


def _tensor_bytes(t: torch.Tensor) -> tuple[int, int]:
    s = t.untyped_storage()
    return s.data_ptr(), s.nbytes()


def measure_activations(loss_and_grad: Callable[[], Any], *, exclude: list[torch.Tensor]) -> tuple[int, int]:
    """(total, largest) bytes of distinct storages autograd saves for backward during one call.

    Storages of `exclude` (weights, the chain state) are not activations and are left out."""
    skip = {_tensor_bytes(t)[0] for t in exclude}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        try:
            ptr, size = _tensor_bytes(t)
        except (RuntimeError, NotImplementedError):    # wrapper tensors without storage (vmap)
            return t
        if ptr not in skip and ptr != 0:
            seen[ptr] = max(seen.get(ptr, 0), size)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss_and_grad()
    return sum(seen.values()), max(seen.values(), default=0)


def plan_memory(est: MemoryEstimate, *, num_chains: int, batch_size: int, budget: int,
                vectorize: bool | None = None, suggest_checkpointing: bool = False) -> MemoryPlan:
    """The fastest arrangement whose estimated peak fits `budget`; MemoryPlanError if none does
    (suggest_checkpointing: the model could run with activation_checkpointing, which is off)."""
    groups = [num_chains] if vectorize else ([1] if vectorize is False or num_chains == 1 else
                                             sorted({num_chains, *range(num_chains - 1, 0, -1)}, reverse=True))
    for group in groups:
        peak = est.peak(chains=group, batch=batch_size)
        if peak <= budget:
            return MemoryPlan(group, 1, peak, budget, est)
    micro_choices = [m for m in range(2, batch_size + 1) if batch_size % m == 0]
    for micro in micro_choices:
        peak = est.peak(chains=groups[-1], batch=batch_size // micro, accumulate=True)
        if peak <= budget:
            return MemoryPlan(groups[-1], micro, peak, budget, est)
    smallest = est.peak(chains=groups[-1], batch=1, accumulate=batch_size > 1)
    base = est.peak(chains=groups[-1], batch=0, accumulate=batch_size > 1)
    if base > budget:
        fix = ("sample fewer parameters (sample_params / sweep.components, e.g. one head 'l0h0' instead of "
               "'all') or run on a device with more memory")
    else:
        fix = "shorten the sequences (dataset max length) or run on a device with more memory"
        if suggest_checkpointing:
            fix = "switch on activation_checkpointing (fewer saved activations), " + fix
    raise MemoryPlanError(
        f"This estimate needs ~{gib(smallest)} even one chain at a time on one-item micro-batches "
        f"(weights {gib(est.weights)}, sampled state {gib(base - est.weights)}), more than the "
        f"{gib(budget)} available; {fix}.")
