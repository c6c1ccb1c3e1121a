"""Convergence diagnostics of traces across chains, as in Vehtari et al. (2021).

Rank-normalized split R-hat (bulk, and tail on the folded draws), bulk ESS (of the
rank-normalized split chains) and tail ESS (the smaller of the 5% and 95% quantile ESS).
Ranks make them insensitive to heavy tails; folding catches a chain with the same mean but
a different spread, which plain split R-hat misses. Numbers match ArviZ (tested); the
implementation stays numpy (+ torch.special.ndtri for the normal quantile), so the library
keeps torch + numpy as its only dependencies.
"""
from __future__ import annotations

import numpy as np
import torch

_TAIL_PROB = 0.05


def _valid(trace: np.ndarray) -> bool:
    return trace.ndim == 2 and trace.shape[0] >= 1 and trace.shape[1] >= 4 and bool(np.isfinite(trace).all())


def _split(trace: np.ndarray) -> np.ndarray:
    """(chains, draws) -> (2*chains, draws//2): each chain's halves as separate chains."""
    half = trace.shape[1] // 2
    return np.concatenate([trace[:, :half], trace[:, trace.shape[1] - half:]], axis=0)


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (1-based, ties share their mean rank) of all entries, in x's shape."""
    flat = x.reshape(-1)
    order = np.argsort(flat, kind="mergesort")
    sorted_vals = flat[order]
    starts = np.concatenate([[True], sorted_vals[1:] != sorted_vals[:-1]])
    group = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    last = np.concatenate([first[1:], [flat.size]]) - 1
    avg = (first + last) / 2.0 + 1.0
    ranks = np.empty(flat.size)
    ranks[order] = avg[group]
    return ranks.reshape(x.shape)


def _z_scale(x: np.ndarray) -> np.ndarray:
    """Rank normalization: normal quantiles of the (r - 3/8) / (S + 1/4) rank fractions."""
    frac = (_ranks(x) - 0.375) / (x.size + 0.25)
    return torch.special.ndtri(torch.from_numpy(frac)).numpy()


def _r_hat(x: np.ndarray) -> float:
    n = x.shape[1]
    w = x.var(axis=1, ddof=1).mean()
    b = n * x.mean(axis=1).var(ddof=1)
    if not w > 0:
        return float("nan")
    return float(np.sqrt((b / w + n - 1) / n))


def r_hat_bulk(trace: np.ndarray) -> float:
    """Rank-normalized split R-hat; ~1.0 when the chains agree, NaN when undefined."""
    trace = np.asarray(trace, dtype=np.float64)
    if not _valid(trace):
        return float("nan")
    return _r_hat(_z_scale(_split(trace)))


def r_hat_tail(trace: np.ndarray) -> float:
    """Rank-normalized split R-hat of |x - median|: catches chains that differ in spread."""
    trace = np.asarray(trace, dtype=np.float64)
    if not _valid(trace):
        return float("nan")
    split = _split(trace)
    return _r_hat(_z_scale(np.abs(split - np.median(split))))


def rank_r_hat(trace: np.ndarray) -> float:
    """max(bulk, tail) rank-normalized split R-hat (Vehtari et al. 2021); < 1.01 is their bar, 1.1 a loose one."""
    return max(r_hat_bulk(trace), r_hat_tail(trace))


def split_r_hat(trace: np.ndarray) -> float:
    """The same as rank_r_hat (kept as the library's public name)."""
    return rank_r_hat(trace)


def _autocov(x: np.ndarray) -> np.ndarray:
    """Autocovariance of each row via FFT (biased, lag 0..n-1)."""
    n = x.shape[-1]
    centered = x - x.mean(axis=-1, keepdims=True)
    size = 1 << (2 * n - 1).bit_length()
    f = np.fft.rfft(centered, n=size, axis=-1)
    return np.fft.irfft(f * np.conj(f), n=size, axis=-1)[..., :n] / n


def _ess(x: np.ndarray) -> float:
    """ESS of (chains, draws) x: Geyer's initial positive then monotone sequence, with the
    final term that keeps antithetic (negatively autocorrelated) chains from over-counting."""
    if np.max(x) - np.min(x) < np.finfo(float).resolution:
        return float(x.size)
    m, n = x.shape
    acov = _autocov(x)
    mean_var = acov[:, 0].mean() * n / (n - 1.0)
    var_plus = mean_var * (n - 1.0) / n + (x.mean(axis=1).var(ddof=1) if m > 1 else 0.0)
    rho = np.zeros(n)
    rho[0] = even = 1.0
    rho[1] = odd = 1.0 - (mean_var - acov[:, 1].mean()) / var_plus
    t = 1
    while t < n - 3 and even + odd > 0.0:
        even = 1.0 - (mean_var - acov[:, t + 1].mean()) / var_plus
        odd = 1.0 - (mean_var - acov[:, t + 2].mean()) / var_plus
        if even + odd >= 0:
            rho[t + 1], rho[t + 2] = even, odd
        t += 2
    max_t = t - 2
    if even > 0:
        rho[max_t + 1] = even
    t = 1
    while t <= max_t - 2:
        if rho[t + 1] + rho[t + 2] > rho[t - 1] + rho[t]:
            rho[t + 1] = rho[t + 2] = (rho[t - 1] + rho[t]) / 2.0
        t += 2
    tau = -1.0 + 2.0 * rho[:max_t + 1].sum() + rho[max_t + 1:max_t + 2].sum()
    tau = max(tau, 1.0 / np.log10(m * n))
    return float("nan") if np.isnan(rho).any() else float(m * n / tau)


def ess_bulk(trace: np.ndarray) -> float:
    """Bulk effective sample size: ESS of the rank-normalized split chains."""
    trace = np.asarray(trace, dtype=np.float64)
    if not _valid(trace):
        return float("nan")
    return _ess(_z_scale(_split(trace)))


def ess_tail(trace: np.ndarray, prob: float = _TAIL_PROB) -> float:
    """Tail effective sample size: min ESS of the indicators x <= q_prob and x <= q_(1-prob)."""
    trace = np.asarray(trace, dtype=np.float64)
    if not _valid(trace):
        return float("nan")
    out = []
    for p in sorted((prob, 1.0 - prob)):
        indicator = (trace <= np.quantile(trace, p)).astype(np.float64)
        out.append(_ess(_split(indicator)))
    return float(min(out))


def ess(trace: np.ndarray) -> float:
    """Bulk ESS (kept as the library's public name)."""
    return ess_bulk(trace)


def drift_z(trace: np.ndarray) -> float:
    """|mean of the second half - mean of the first half| over its standard error (ESS-based).

    Stationary traces give |z| of order 1; a chain still relaxing towards its stationary
    distribution (too small a step, too short a burn-in) gives large values.
    """
    trace = np.asarray(trace, dtype=np.float64)
    if not _valid(trace):
        return float("nan")
    half = trace.shape[1] // 2
    first, second = trace[:, :half], trace[:, trace.shape[1] - half:]
    se2 = 0.0
    for part in (first, second):
        e = _ess(part) if part.shape[1] >= 4 else float("nan")
        var = part.var(ddof=1)
        if not (e > 0 and var >= 0):
            return float("nan")
        se2 += var / e
    if se2 <= 0:
        return 0.0
    return float(abs(second.mean() - first.mean()) / np.sqrt(se2))
