"""Small models with known learning coefficients, shared by the estimator tests."""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset


def half_mse(model: nn.Module, batch: list[torch.Tensor]) -> torch.Tensor:
    """Gaussian negative log-likelihood (sigma = 1) up to a constant: n * L_n is the NLL."""
    x, y = batch
    return 0.5 * ((model(x) - y) ** 2).reshape(x.shape[0], -1).sum(-1).mean()


def linear_regression(*, n: int, d_in: int, d_out: int, seed: int = 0) -> tuple[nn.Linear, TensorDataset]:
    """A regular model at its least-squares fit: lambda = d/2 with d = d_out*(d_in+1)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_in, generator=g)
    y = x @ torch.randn(d_out, d_in, generator=g).T + 0.3 + torch.randn(n, d_out, generator=g)
    model = nn.Linear(d_in, d_out)
    sol = torch.linalg.lstsq(torch.cat([x, torch.ones(n, 1)], 1), y).solution
    with torch.no_grad():
        model.weight.copy_(sol[:d_in].T)
        model.bias.copy_(sol[d_in])
    return model, TensorDataset(x, y)


class NormalCrossing(nn.Module):
    """y = w1 * w2^2 * x at w* = 0: K = w1^2 w2^4 / 2, lambda = 1/4 (multiplicity 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.zeros(()))
        self.w2 = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w1 * self.w2 ** 2 * x


class SumOfVectors(nn.Module):
    """y = (a + b) . x: d = 2k parameters but rank-k Fisher, so lambda = k/2 (not d/2 = k)."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.zeros(k))
        self.b = nn.Parameter(torch.zeros(k))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ (self.a + self.b)


def scalar_noise_data(n: int, seed: int = 0) -> TensorDataset:
    """x ~ N(0,1), y ~ N(0,1): data from the true parameter w* = 0 of NormalCrossing."""
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, generator=g), torch.randn(n, generator=g))


def sum_of_vectors(*, n: int, k: int, seed: int = 0) -> tuple[SumOfVectors, TensorDataset]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, k, generator=g)
    y = x @ torch.randn(k, generator=g) + torch.randn(n, generator=g)
    fit = torch.linalg.lstsq(x, y.unsqueeze(1)).solution.squeeze(1)
    model = SumOfVectors(k)
    with torch.no_grad():
        model.a.copy_(0.25 * fit)
        model.b.copy_(0.75 * fit)
    return model, TensorDataset(x, y)


def default_nbeta(n: int) -> float:
    return n / math.log(n)


class DictTokens(Dataset):
    """A map-style dataset of {"input_ids": LongTensor} items (collated into a dict)."""

    def __init__(self, tokens: torch.Tensor) -> None:
        self.tokens = tokens

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.tokens[i]}
