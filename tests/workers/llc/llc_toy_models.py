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


def scalar_noise_data(n: int, seed: int = 0, *, decorrelate: bool = False) -> TensorDataset:
    """x ~ N(0,1), y ~ N(0,1): data from the true parameter w* = 0 of NormalCrossing.

    decorrelate: y minus its projection on x, so S = mean(x y) = 0. NormalCrossing's
    nbeta (L_n(w) - L_n(0)) = nbeta (m2 w1^2 w2^4 / 2 - S w1 w2^2) depends on the data only through
    m2 = mean(x^2) and S; a nonzero S is the data's own fluctuation (n S^2 ~ chi^2_1; seed 0 at
    n = 1e4 draws n S^2 = 3.6), which moves the posterior's E[nbeta (L_n - L_n(0))] far from 1/4
    (0.12 instead of 0.22 at gamma = 1): normal_crossing_exact gives the value for any data."""
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, generator=g), torch.randn(n, generator=g)
    if decorrelate:
        y = y - x * (x @ y) / (x @ x)
    return TensorDataset(x, y)


def normal_crossing_exact(data: TensorDataset, *, nbeta: float, gamma: float) -> float:
    """E[nbeta (L_n(w) - L_n(0))] under exp(-nbeta (L_n(w) - L_n(0)) - gamma |w|^2 / 2), by quadrature.

    The quantity lambda_hat estimates for NormalCrossing at w* = 0 (exact sampler, any number of
    draws). Given w2 the density is Gaussian in w1 (precision a = nbeta m2 w2^4 + gamma, mean
    nbeta S w2^2 / a), so w1 is integrated in closed form and w2 on a fine grid."""
    x, y = (t.double() for t in data.tensors)
    m2, s = float((x * x).mean()), float((x * y).mean())
    w2 = torch.linspace(-12 / math.sqrt(gamma), 12 / math.sqrt(gamma), 400_001, dtype=torch.float64)
    a = nbeta * m2 * w2 ** 4 + gamma
    b = nbeta * s * w2 ** 2
    mu = b / a
    inner = nbeta * (0.5 * m2 * w2 ** 4 * (mu ** 2 + 1 / a) - s * w2 ** 2 * mu)
    logw = -0.5 * gamma * w2 ** 2 - 0.5 * torch.log(a) + b ** 2 / (2 * a)
    weight = torch.exp(logw - logw.max())
    return float((weight * inner).sum() / weight.sum())


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


def rrr_lambda(m: int, h: int, n_out: int, r: int) -> float:
    """Aoyagi & Watanabe (2005): lambda of reduced-rank regression x (m) -> h -> y (n_out), true rank r."""
    if n_out + r <= m + h and m + r <= n_out + h and h + r <= m + n_out:
        value = 2 * (h + r) * (m + n_out) - (m - n_out) ** 2 - (h + r) ** 2
        return (value + (1 if (m + h + n_out + r) % 2 else 0)) / 8
    if m + h < n_out + r:
        return (h * m - h * r + n_out * r) / 2
    if n_out + h < m + r:
        return (h * n_out - h * r + m * r) / 2
    return m * n_out / 2


def dln_lambda(widths: tuple[int, ...], r: int) -> float:
    """Aoyagi (2024): lambda of a deep linear network with widths (input, ..., output) and true rank r."""
    import itertools

    big_m = [w - r for w in widths]
    idx = range(len(widths))
    for size in range(2, len(widths) + 1):
        for subset in itertools.combinations(idx, size):
            inside = [big_m[i] for i in subset]
            outside = [big_m[i] for i in idx if i not in subset]
            ell, total = size - 1, sum(inside)
            low_out = min(outside) if outside else math.inf
            if max(inside) < low_out and total >= ell * max(inside) and total < ell * low_out:
                a = total - ell * (total // ell)
                pairs = sum(inside[i] * inside[j] for i in range(size) for j in range(i + 1, size))
                return ((-r * r + r * (widths[0] + widths[-1])) / 2 + a * (ell - a) / (4 * ell)
                        - ell * (ell - 1) / 4 * (total / ell) ** 2 + pairs / 2)
    raise ValueError(f"no index set satisfies Aoyagi's conditions for widths {widths}, rank {r}")


class DeepLinear(nn.Module):
    """y = W_L ... W_1 x (no biases)."""

    def __init__(self, widths: tuple[int, ...]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b, bias=False) for a, b in zip(widths[:-1], widths[1:], strict=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


def deep_linear(*, widths: tuple[int, ...], rank: int, n: int, seed: int = 0,
                fit: bool = False) -> tuple[DeepLinear, TensorDataset]:
    """A teacher of the given rank as w* (so lambda is Aoyagi's), data y = teacher(x) + N(0, 1).

    fit=True moves w* from the teacher to the minimum of L_n next to it (L-BFGS from the teacher),
    as a trained checkpoint would be: the teacher is not a critical point of L_n, and lambda_hat
    there also holds -nbeta (L_n(teacher) - min L_n) (about -0.2 lambda on the 3-2-2-2 network at n = 1e4)."""
    g = torch.Generator().manual_seed(seed)
    model = DeepLinear(widths)
    with torch.no_grad():
        for i, layer in enumerate(model.layers):
            w = torch.randn(layer.weight.shape, generator=g)
            if i == 0:   # rank r: zero all but r rows of the first layer's output (at most r directions pass)
                w[rank:] = 0.0
            layer.weight.copy_(w / math.sqrt(layer.weight.shape[1]))
    x = torch.randn(n, widths[0], generator=g)
    with torch.no_grad():
        y = model(x) + torch.randn(n, widths[-1], generator=g)
    if fit:
        opt = torch.optim.LBFGS(model.parameters(), max_iter=500, tolerance_grad=1e-10, tolerance_change=1e-14,
                                line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = half_mse(model, [x, y])
            loss.backward()
            return loss

        for _ in range(5):
            opt.step(closure)
        model.zero_grad(set_to_none=True)
    return model, TensorDataset(x, y)
