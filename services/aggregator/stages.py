"""Developmental stages on a λ̂-over-training curve.

λ̂ is smoothed against x = log(step + 1) (step 0 is kept: log(0 + 1) = 0) with scipy's
penalized smoothing spline, weighted by 1/σ² of each checkpoint's estimate and with the
smoothing chosen by generalized cross-validation. Stage boundaries are the fit's critical
points: sign changes of dλ̂/dx (peaks and troughs), pruned weakest first until every stage
moves λ̂ by more than `z` noise units and spans at least `min_points` checkpoints (so noise
alone yields no stages), then plateaus (stretches at least `plateau_width` wide where
|dλ̂/dx| stays under `plateau_frac` of its maximum) that split a stage into two significant
ones. Each stage is then typed from
the signs of its λ̂ and loss changes: A (loss falls while λ̂ rises), B (loss about flat while
λ̂ falls), or other.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike, NDArray

KIND_A = "A"
KIND_B = "B"
KIND_OTHER = "other"

MIN_POINTS_FOR_SPLINE = 5  # make_smoothing_spline's minimum


def to_x(steps: ArrayLike) -> NDArray[np.float64]:
    """The log axis of every fit: log(step + 1), so step 0 stays on it."""
    return np.log(np.asarray(steps, dtype=float) + 1.0)


def to_step(x: ArrayLike) -> NDArray[np.float64]:
    return np.expm1(np.asarray(x, dtype=float))


@dataclass(frozen=True)
class SmoothFit:
    """A smooth curve y(x) on x = log(step+1), evaluated on a dense grid."""

    grid_x: NDArray[np.float64]
    grid_y: NDArray[np.float64]
    grid_dy: NDArray[np.float64]      # dy/dx on the grid
    residual_rms: float               # weighted RMS of data minus fit
    method: str                       # "smoothing-spline", "pchip", "constant"

    def at(self, x: ArrayLike) -> NDArray[np.float64]:
        return np.interp(np.asarray(x, dtype=float), self.grid_x, self.grid_y)

    @property
    def grid_steps(self) -> NDArray[np.float64]:
        return to_step(self.grid_x)


def _clean_sigma(sigma: ArrayLike | None, n: int) -> NDArray[np.float64]:
    """Usable per-point σ: unknown/zero σ (one chain, one seed) become the typical σ."""
    if sigma is None:
        return np.ones(n)
    s = np.asarray(sigma, dtype=float).copy()
    good = np.isfinite(s) & (s > 0)
    typical = float(np.median(s[good])) if good.any() else 1.0
    s[~good] = typical
    return np.maximum(s, 0.1 * typical)  # one lucky tiny σ must not pin the whole fit


def _unique_x(x: NDArray[np.float64], y: NDArray[np.float64], w: NDArray[np.float64]
              ) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Merge repeated x (same step twice) into their weighted mean."""
    order = np.argsort(x, kind="stable")
    x, y, w = x[order], y[order], w[order]
    ux, inv = np.unique(x, return_inverse=True)
    if len(ux) == len(x):
        return x, y, w
    wsum = np.bincount(inv, weights=w)
    return ux, np.bincount(inv, weights=w * y) / wsum, wsum


def gcv_lam(x: NDArray[np.float64], y: NDArray[np.float64], w: NDArray[np.float64]) -> float:
    """The smoothing parameter generalized cross-validation picks (what make_smoothing_spline
    does internally), found on a log grid so a bootstrap can scale it: the fit is linear in y,
    so one solve against the identity gives the hat matrix."""
    from scipy.interpolate import make_smoothing_spline

    n = len(x)
    best, best_lam = math.inf, 1.0
    for lam in np.logspace(-8, 4, 49):
        hat = make_smoothing_spline(x, np.eye(n), w=w, lam=float(lam))(x)      # (n, n): column j = fit of e_j
        resid = y - hat @ y
        denom = (1.0 - np.trace(hat) / n) ** 2
        score = float(np.sum(w * resid**2) / n / denom) if denom > 1e-12 else math.inf
        if score < best:
            best, best_lam = score, float(lam)
    return best_lam


def _fit_inputs(steps: ArrayLike, values: ArrayLike, sigma: ArrayLike | None
                ) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """x = log(step+1), y, weights 1/σ² (mean 1): finite points, repeated steps merged."""
    x = to_x(steps)
    y = np.asarray(values, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    s = _clean_sigma(None if sigma is None else np.asarray(sigma, dtype=float)[keep], int(keep.sum()))
    x, y, w = _unique_x(x[keep], y[keep], 1.0 / s**2)
    return x, y, (w / w.mean() if len(w) else w)


def reference_lam(steps: ArrayLike, values: ArrayLike, sigma: ArrayLike | None = None) -> float | None:
    """GCV's smoothing parameter for this curve (None when too few points for a spline)."""
    x, y, w = _fit_inputs(steps, values, sigma)
    return gcv_lam(x, y, w) if len(x) >= MIN_POINTS_FOR_SPLINE else None


def fit_curve(steps: ArrayLike, values: ArrayLike, sigma: ArrayLike | None = None, *,
              grid_size: int = 512, lam: float | None = None) -> SmoothFit:
    """Smoothing spline of `values` against log(step+1), weighted by 1/σ² (smoothing chosen by
    GCV, or `lam` when given: the bootstrap jitters it)."""
    from scipy.interpolate import PchipInterpolator, make_smoothing_spline

    x, y, w = _fit_inputs(steps, values, sigma)
    if len(x) == 0:
        raise ValueError("no finite points to fit; every checkpoint's estimate is missing or not finite.")
    if len(x) == 1:
        gx = np.array([x[0], x[0]])
        return SmoothFit(gx, np.array([y[0], y[0]]), np.zeros(2), 0.0, "constant")
    gx = np.linspace(x[0], x[-1], grid_size)
    if len(x) >= MIN_POINTS_FOR_SPLINE:
        spline = make_smoothing_spline(x, y, w=w, lam=lam)
        fitted, gy, gdy, method = spline(x), spline(gx), spline.derivative()(gx), "smoothing-spline"
    else:
        pchip = PchipInterpolator(x, y)
        fitted, gy, gdy, method = pchip(x), pchip(gx), pchip.derivative()(gx), "pchip"
    rms = float(np.sqrt(np.sum(w * (y - fitted) ** 2) / np.sum(w)))
    return SmoothFit(gx, np.asarray(gy, float), np.asarray(gdy, float), rms, method)


@dataclass(frozen=True)
class DetectedStage:
    index: int
    start_step: int
    end_step: int
    kind: str                      # "A", "B" or "other"
    llc_start: float
    llc_end: float
    loss_start: float | None
    loss_end: float | None

    @property
    def llc_change(self) -> float:
        return self.llc_end - self.llc_start

    @property
    def loss_change(self) -> float | None:
        if self.loss_start is None or self.loss_end is None:
            return None
        return self.loss_end - self.loss_start


@dataclass(frozen=True)
class StageDetection:
    fit: SmoothFit
    loss_fit: SmoothFit | None
    boundaries_x: tuple[float, ...]           # interior stage boundaries on x = log(step+1)
    stages: tuple[DetectedStage, ...]
    noise: float                              # the λ̂ noise scale the pruning used
    threshold: float                          # smallest |Δλ̂| a stage must have
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def boundary_steps(self) -> tuple[int, ...]:
        return tuple(int(round(float(s))) for s in to_step(np.array(self.boundaries_x)))


def sign_changes(fit: SmoothFit) -> list[int]:
    """Grid indices where dλ̂/dx changes sign (the fit's peaks and troughs), ends excluded."""
    dy = fit.grid_dy
    idx = []
    for i in range(1, len(dy)):
        if dy[i - 1] * dy[i] < 0:
            idx.append(i if abs(dy[i]) < abs(dy[i - 1]) else i - 1)
    return [i for i in idx if 0 < i < len(dy) - 1]


def plateau_points(fit: SmoothFit, lo: int, hi: int, *, plateau_frac: float, min_width: float) -> list[int]:
    """Grid indices in (lo, hi) at the flattest point of each plateau: a stretch at least
    `min_width` wide on log(step+1) where |dλ̂/dx| stays below `plateau_frac` of its largest
    value over the curve (a single noisy kink is not a plateau)."""
    mag = np.abs(fit.grid_dy)
    scale = float(mag.max())
    if scale <= 0 or hi - lo < 3:
        return []
    flat = mag < plateau_frac * scale
    out = []
    i = lo + 1
    while i < hi:
        if not flat[i]:
            i += 1
            continue
        j = i
        while j + 1 < hi and flat[j + 1]:
            j += 1
        if fit.grid_x[j] - fit.grid_x[i] >= min_width:
            out.append(i + int(np.argmin(mag[i:j + 1])))
        i = j + 1
    return out


class _Significance:
    """Whether a candidate stage is real: it moves λ̂ by at least the threshold and spans
    at least `min_points` checkpoints (the fit near one lone point is noise)."""

    def __init__(self, fit: SmoothFit, data_x: NDArray[np.float64], threshold: float, min_points: int) -> None:
        self.fit, self.data_x, self.threshold, self.min_points = fit, data_x, threshold, min_points

    def delta(self, a: float, b: float) -> float:
        ya, yb = self.fit.at([a, b])
        return float(yb - ya)

    def points(self, a: float, b: float) -> int:
        eps = 1e-9
        return int(np.sum((self.data_x >= a - eps) & (self.data_x <= b + eps)))

    def score(self, a: float, b: float) -> float:
        """|Δλ̂| / threshold, or 0 when the stage holds too few checkpoints."""
        if self.points(a, b) < self.min_points:
            return 0.0
        return abs(self.delta(a, b)) / self.threshold

    def ok(self, a: float, b: float) -> bool:
        return self.score(a, b) >= 1.0


def _prune(bounds: list[float], sig: _Significance) -> list[float]:
    """Drop boundaries until every stage is significant (smallest λ̂ change first); a weak wiggle
    between two stages going the same way merges all three."""
    bounds = sorted(set(bounds))
    while len(bounds) > 2:
        pairs = list(zip(bounds[:-1], bounds[1:], strict=True))
        deltas = [sig.delta(a, b) for a, b in pairs]
        weak = [i for i, (a, b) in enumerate(pairs) if not sig.ok(a, b)]
        if not weak:
            break
        i = min(weak, key=lambda k: abs(deltas[k]))  # the weakest change goes first
        last = len(pairs) - 1
        if i == 0:
            del bounds[1]
        elif i == last:
            del bounds[-2]
        elif np.sign(deltas[i - 1]) == np.sign(deltas[i + 1]):
            del bounds[i:i + 2]
        elif abs(deltas[i - 1]) <= abs(deltas[i + 1]):
            del bounds[i]
        else:
            del bounds[i + 1]
    return bounds


def _split_plateaus(bounds: list[float], sig: _Significance, *, plateau_frac: float, min_width: float) -> list[float]:
    """Split a stage at its flattest plateau when both halves are significant on their own
    (two rises separated by a plateau are two stages, not one)."""
    grid = sig.fit.grid_x
    out = [bounds[0]]
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        lo, hi = int(np.searchsorted(grid, a)), int(np.searchsorted(grid, b))
        cands = sorted(plateau_points(sig.fit, lo, hi, plateau_frac=plateau_frac, min_width=min_width),
                       key=lambda i: abs(sig.fit.grid_dy[i]))
        for i in cands:
            c = float(grid[i])
            if sig.ok(a, c) and sig.ok(c, b):
                out.extend(_split_plateaus([a, c, b], sig, plateau_frac=plateau_frac, min_width=min_width)[1:-1])
                break
        out.append(b)
    return sorted(set(out))


def classify(llc_change: float, loss_change: float | None, loss_scale: float, *, flat_tol: float = 0.1) -> str:
    """A: λ̂ rises while loss falls; B: λ̂ falls while loss is about flat (|Δ| ≤ flat_tol of the
    loss's range over training); anything else (or no loss known) is other."""
    if loss_change is None or not math.isfinite(loss_change):
        return KIND_OTHER
    tol = flat_tol * loss_scale
    if llc_change > 0 and loss_change < -tol:
        return KIND_A
    if llc_change < 0 and abs(loss_change) <= tol:
        return KIND_B
    return KIND_OTHER


def detect_stages(steps: Sequence[int] | ArrayLike, llc: ArrayLike, llc_sigma: ArrayLike | None = None, *,
                  loss_steps: Sequence[int] | ArrayLike | None = None, loss: ArrayLike | None = None,
                  z: float = 3.0, min_points: int = 3, plateau_frac: float = 0.15, plateau_width: float = 0.5,
                  loss_flat_tol: float = 0.1, grid_size: int = 512, lam: float | None = None) -> StageDetection:
    """Stages of one λ̂ curve (one hyperparameter setting); `loss` (at `loss_steps`, default
    the λ̂ steps) types them. `z` is how many noise units a stage's λ̂ change must exceed;
    the noise is the larger of the median σ given and the fit's residual RMS."""
    steps_arr = np.asarray(steps, dtype=float)
    fit = fit_curve(steps_arr, llc, llc_sigma, grid_size=grid_size, lam=lam)
    notes: list[str] = []
    given = np.asarray([] if llc_sigma is None else llc_sigma, dtype=float)
    given = given[np.isfinite(given) & (given > 0)]
    med_sigma = float(np.median(given)) if given.size else 0.0
    noise = max(med_sigma, fit.residual_rms)
    if noise == 0.0:
        noise = 1e-9 * max(1.0, float(np.max(np.abs(fit.grid_y))))
    threshold = z * noise

    loss_fit: SmoothFit | None = None
    if loss is not None:
        lsteps = steps_arr if loss_steps is None else np.asarray(loss_steps, dtype=float)
        lvals = np.asarray(loss, dtype=float)
        if np.isfinite(lvals).sum() >= 2:
            loss_fit = fit_curve(lsteps, lvals, None, grid_size=grid_size)
        else:
            notes.append("fewer than two finite losses: stages are not typed")
    if fit.method == "constant":
        return StageDetection(fit, loss_fit, (), (), noise, threshold, ("one checkpoint: no curve",))
    if fit.method == "pchip":
        notes.append(f"fewer than {MIN_POINTS_FOR_SPLINE} checkpoints: interpolated, not smoothed")

    sig = _Significance(fit, to_x(steps_arr[np.isfinite(steps_arr)]), threshold, min_points)
    candidates = [float(fit.grid_x[i]) for i in sign_changes(fit)]
    bounds = _prune([float(fit.grid_x[0]), *candidates, float(fit.grid_x[-1])], sig)
    bounds = _split_plateaus(bounds, sig, plateau_frac=plateau_frac, min_width=plateau_width)
    if len(bounds) == 2 and abs(sig.delta(bounds[0], bounds[1])) < threshold:
        return StageDetection(fit, loss_fit, (), (), noise, threshold, (*notes, "λ̂ does not change beyond noise"))
    stages = stages_between(fit, loss_fit, bounds, steps_arr, loss_flat_tol=loss_flat_tol)
    return StageDetection(fit, loss_fit, tuple(bounds[1:-1]), stages, noise, threshold, tuple(notes))


def stages_between(fit: SmoothFit, loss_fit: SmoothFit | None, bounds: Sequence[float], steps: NDArray[np.float64],
                   *, loss_flat_tol: float = 0.1) -> tuple[DetectedStage, ...]:
    """The typed stages between consecutive `bounds` (on log(step+1), both ends included)."""
    loss_scale = 0.0
    if loss_fit is not None:
        loss_scale = float(loss_fit.grid_y.max() - loss_fit.grid_y.min())
    stages = []
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        la, lb = fit.at([a, b])
        loss_a = loss_b = None
        if loss_fit is not None:
            loss_a, loss_b = (float(v) for v in loss_fit.at([a, b]))
        kind = classify(float(lb - la), None if loss_a is None else loss_b - loss_a, loss_scale, flat_tol=loss_flat_tol)
        start = int(round(float(to_step(a)))) if i else int(round(float(np.nanmin(steps))))
        end = int(round(float(to_step(b)))) if i < len(bounds) - 2 else int(round(float(np.nanmax(steps))))
        stages.append(DetectedStage(i, start, end, kind, float(la), float(lb), loss_a, loss_b))
    return tuple(stages)
