"""The chunked CPU update is the whole-vector update: same noise stream, same values."""
from __future__ import annotations

import pytest
import torch

from workers.llc.sgld import SGLDStep


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("size", [5, 17, 16 * 40 + 7, 16 * 40 + 20])
def test_update_in_chunks_equals_the_whole_update(dtype: torch.dtype, size: int) -> None:
    step = SGLDStep(epsilon=1e-3, gamma=10.0, nbeta=5.0)
    g = torch.Generator().manual_seed(0)
    flat0 = torch.randn(size, generator=g, dtype=dtype)
    start = flat0 + 0.1 * torch.randn(2, size, generator=g, dtype=dtype)
    grad = torch.randn(2, size, generator=g, dtype=dtype)

    whole, gens = start.clone(), [torch.Generator().manual_seed(s) for s in (1, 2)]
    for _ in range(3):                      # three steps: the generators stay in step too
        noise = torch.stack([torch.randn(size, generator=gg, dtype=dtype) for gg in gens])
        step.apply(whole, flat0, grad.clone(), noise, {})

    chunked, gens = start.clone(), [torch.Generator().manual_seed(s) for s in (1, 2)]
    for _ in range(3):
        step.apply_in_chunks(chunked, flat0, grad.clone(), gens, chunk=64, scratch=chunked.new_empty(2, 128))
    assert torch.equal(chunked, whole)


def test_update_in_chunks_is_plain_sgld_on_multiples_of_16() -> None:
    x = torch.zeros(1, 40)
    with pytest.raises(ValueError, match="multiple of 16"):
        SGLDStep(epsilon=1e-3, gamma=1.0, nbeta=1.0).apply_in_chunks(x, x[0], x.clone(), [torch.Generator()],
                                                                     chunk=20, scratch=x.new_empty(1, 40))
    with pytest.raises(ValueError, match="plain SGLD"):
        SGLDStep(epsilon=1e-3, gamma=1.0, nbeta=1.0, method="rmsprop_sgld").apply_in_chunks(
            x, x[0], x.clone(), [torch.Generator()], chunk=16, scratch=x.new_empty(1, 32))
