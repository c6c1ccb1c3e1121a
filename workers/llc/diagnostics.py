"""Convergence diagnostics of loss traces across chains (split R-hat, bulk ESS).

Follows Gelman et al. (BDA3) and Vehtari et al. (2021) without rank normalization: the loss
traces are near-Gaussian, and this keeps the library numpy-only.
"""
from __future__ import annotations

import numpy as np


def _split(trace: np.ndarray) -> np.ndarray:
    """(chains, draws) -> (2*chains, draws//2): each chain's halves as separate chains."""
    half = trace.shape[1] // 2
    return np.concatenate([trace[:, :half], trace[:, trace.shape[1] - half:]], axis=0)


def split_r_hat(trace: np.ndarray) -> float:
    """Potential scale reduction; ~1.0 when chains agree, NaN when undefined."""
    trace = np.asarray(trace, dtype=np.float64)
    if trace.ndim != 2 or trace.shape[1] < 4 or not np.isfinite(trace).all():
        return float("nan")
    x = _split(trace)
    n = x.shape[1]
    w = x.var(axis=1, ddof=1).mean()
    b = n * x.mean(axis=1).var(ddof=1)
    if w <= 0:
        return float("nan")
    var_plus = (n - 1) / n * w + b / n
    return float(np.sqrt(var_plus / w))


def _autocov(x: np.ndarray) -> np.ndarray:
    """Autocovariance of each row via FFT (biased, lag 0..n-1)."""
    n = x.shape[-1]
    centered = x - x.mean(axis=-1, keepdims=True)
    size = 1 << (2 * n - 1).bit_length()
    f = np.fft.rfft(centered, n=size, axis=-1)
    return np.fft.irfft(f * np.conj(f), n=size, axis=-1)[..., :n] / n


def ess(trace: np.ndarray) -> float:
    """Effective sample size over all chains (Geyer's initial monotone sequence)."""
    trace = np.asarray(trace, dtype=np.float64)
    if trace.ndim != 2 or trace.shape[1] < 4 or not np.isfinite(trace).all():
        return float("nan")
    x = _split(trace)
    m, n = x.shape
    acov = _autocov(x)
    w = acov[:, 0].mean() * n / (n - 1)
    if w <= 0:
        return float("nan")
    var_plus = w * (n - 1) / n + (x.mean(axis=1).var(ddof=1) if m > 1 else 0.0)
    rho = 1.0 - (w - acov.mean(axis=0)) / var_plus
    rho[0] = 1.0
    # Sum pairs of autocorrelations while positive, forced monotone (Geyer 1992).
    tau = -1.0
    prev = np.inf
    for t in range(0, n - 1, 2):
        pair = rho[t] + rho[t + 1]
        if pair < 0:
            break
        pair = min(pair, prev)
        prev = pair
        tau += 2.0 * pair
    tau = max(tau, 1.0 / np.log10(m * n))
    return float(m * n / tau)
