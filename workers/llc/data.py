"""Minibatches for SGLD without DataLoader overhead.

Each chain draws from its own seeded index stream, so chain c sees the same batches whether
chains run vectorized or one after another. Batches are drawn with replacement (each item
uniformly, independently of every earlier batch): with shuffled epochs the batch a draw is
measured on depends on the batches that moved the chain earlier in the epoch, which biased
lambda_hat upwards (+0.6 on a reduced-rank regression with lambda = 5; docs/estimator.md). Small datasets are collated once and
indexed per step; tensor datasets are sliced directly.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils.data import Dataset, default_collate

# Above this many bytes a dataset is fetched item by item instead of collated up front.
_MATERIALIZE_MAX_BYTES = 1 << 30


def chain_generator(seed: int, chain: int, stream: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator owned by one (chain, stream); streams: 0 = batches, 1 = noise, 2 = baseline, 3 = table check."""
    gen = torch.Generator(device=device)
    gen.manual_seed((int(seed) * 1_000_003 + chain * 7_919 + stream * 104_729) % (2**63 - 1))
    return gen


class IndexStream:
    """Batch indices for one chain: independent uniform draws, with replacement."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator) -> None:
        self._n = n
        self._batch = batch_size
        self._gen = generator

    def next(self) -> torch.Tensor:
        return torch.randint(self._n, (self._batch,), generator=self._gen)


def _nbytes(tree: Any) -> int:
    leaves, _ = tree_flatten(tree)
    return sum(x.numel() * x.element_size() for x in leaves if isinstance(x, torch.Tensor))


def _all_tensors(tree: Any) -> bool:
    leaves, _ = tree_flatten(tree)
    return bool(leaves) and all(isinstance(x, torch.Tensor) for x in leaves)


class BatchSource:
    """Gathers batches of dataset items as default-collated pytrees on `device`."""

    def __init__(self, dataset: Dataset, n: int, device: torch.device, *, expected_items: int) -> None:
        self._dataset = dataset
        self._device = device
        self._table: Any = None
        tensors = getattr(dataset, "tensors", None)
        if isinstance(tensors, (tuple, list)) and tensors and all(
            isinstance(t, torch.Tensor) and t.shape[0] == n for t in tensors
        ):
            # TensorDataset: default collate of its tuples is a list of stacked tensors.
            self._table = [t.to(device) for t in tensors]
            return
        first = default_collate([dataset[0]])
        if _all_tensors(first) and n <= expected_items and _nbytes(first) * n <= _MATERIALIZE_MAX_BYTES:
            self._table = tree_map(lambda t: t.to(device), default_collate([dataset[i] for i in range(n)]))

    @property
    def indexes_on_device(self) -> bool:
        """Whether gather indexes a table on the device (so indices may live there too)."""
        return self._table is not None

    def gather(self, idx: torch.Tensor) -> Any:
        """Items at idx (any shape) collated with the index shape as leading dims."""
        if self._table is not None:
            flat = idx.to(self._device) if idx.device != self._device else idx
            lead = tuple(flat.shape)
            flat = flat.reshape(-1)
            # index_select: the same rows as t[idx], about twice as fast as advanced indexing.
            return tree_map(lambda t: torch.index_select(t, 0, flat).view(lead + tuple(t.shape[1:])), self._table)
        shape = tuple(idx.shape)
        batch = default_collate([self._dataset[i] for i in idx.reshape(-1).tolist()])
        return tree_map(lambda t: t.reshape(shape + tuple(t.shape[1:])).to(self._device)
                        if isinstance(t, torch.Tensor) else t, batch)

    def range(self, start: int, stop: int) -> Any:
        return self.gather(torch.arange(start, stop))


def stack_indices(streams: Sequence[IndexStream]) -> torch.Tensor:
    return torch.stack([s.next() for s in streams])
