"""gamma = "auto": pilots down a log grid of the localization strength, and the rule that picks one.

The localization gamma (w - w*) holds the chains near w*, and it also shrinks lambda_hat: by
about 1/(1 + gamma/(nbeta h)) along a direction of curvature h, so most along the soft, singular
directions the LLC is about. Measured on a deep linear network (3-2-2-2, n = 1e4, 16 chains,
20,000 burn-in steps): gamma/nbeta = 0.09 (gamma = 100) gave 0.76 of the lambda_hat at 0.003.
Too weak a gamma lets the chains wander off along flat valleys and away from w*.

The grid is in units of g = gamma / nbeta (the localization relative to the tempered loss's
unit curvature), scanned from strong to weak. All pilots run at one step size (the configured
epsilon, or the epsilon grid's smallest step when epsilon is "auto") and with the same seed,
so neighbouring pilots share their batches and noise: the rise of lambda_hat from one gamma to
the next is measured chain by chain, with a far smaller standard error than either estimate.
A pilot is usable when its traces pass (calibration.check) and the chains stay localized: the
mean squared distance |w - w*|^2 of the second half of the draws is at most LOCAL_RATIO_MAX
times that of the first half (a chain drifting away grows it without bound). The pick is where
lambda_hat has stopped rising: the first neighbouring pair of usable pilots where the weaker
gamma's rise is shown to be small (rise + RISE_SIGMAS paired standard errors <= RISE_REL of
lambda_hat); of that pair the weaker gamma. Noisy pilots do not stop the scan early: a weaker
gamma is the side of less bias. A pilot whose chains are localized but have not mixed (R-hat or
drift) is recorded and passed over: the next, weaker gamma burns in longer and may pass (on a deep
linear network's third data set, gamma/nbeta = 0.03 read R-hat 1.12 and ending there took 0.1, where
lambda_hat was 0.57 lambda). The scan ends at the first pilot that diverged or drifted away from w*
(the last usable one is taken), or before one too slow to relax (MAX_PILOT_STEPS).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from .calibration import PilotStats, check

# g = gamma / nbeta, strong to weak. 0.1 is about gamma = 100 at n = 1e4; 1e-4 reaches gamma ~ 1
# at n = 1e5, where the normal crossing (flat to sixth order at w*) first shows its lambda.
GAMMA_GRID = (0.1, 0.03, 0.01, 0.003, 0.001, 0.0003, 0.0001)
LOCAL_RATIO_MAX = 1.5      # second-half / first-half mean |w - w*|^2 a localized pilot stays below
RISE_REL = 0.05           # lambda_hat stopped rising: the weaker gamma's rise, plus ...
RISE_SIGMAS = 2.0          # ... this many of its standard errors, is at most this share of lambda_hat
PILOT_TIME = 20.0          # draws of a gamma pilot at dimensionless step c: PILOT_TIME / c (at least 100)
RELAX_TIMES = 2.0          # burn-in: at least this many relaxation times 1/(c g) of the localization
PILOT_STEP = 0.01          # c = eps * nbeta * s of the pilots when epsilon is "auto" (calibration.GRID's smallest)
MAX_PILOT_STEPS = 30_000   # default SGLDConfig.gamma_pilot_steps: the scan ends before a pilot that needs more
# With epsilon "auto", when no pilot passes at PILOT_STEP the scan is repeated at these larger steps
# (the step-up): a loss with no stiff direction at w* (the normal crossing w1 w2^2 x: zero curvature
# there) leaves lambda_hat to directions held by gamma alone, which at c = 0.01 do not mix within
# the budget. Not above 1: there SGLD inflates a unit-curvature direction's variance by 1/(1 - c/4)
# = 1.33, and on the normal crossing c = 3 gave +30% (c = 1 and 0.3 agreed with the exact value).
STEP_UP = (0.1, 1.0)


def relax_steps(step: float, ratio: float) -> int:
    """RELAX_TIMES relaxation times 1/(c g) of the localization, in steps (see pilot_steps)."""
    return int(math.ceil(RELAX_TIMES / (step * ratio))) if step * ratio > 0 else 0


def pilot_steps(num_burnin: int, step: float, ratio: float, *, slow: bool = False) -> tuple[int, int]:
    """(burn-in, draws) of a gamma pilot at dimensionless step c = step and g = gamma/nbeta = ratio.

    Directions held by the localization alone (flat or quartic ones) relax as (1 - c g / 2)^t in
    the mean and (1 - c g)^t in the variance: a weaker gamma needs a longer burn-in, RELAX_TIMES / (c g)
    (20,000 steps at c = g = 0.01). On a deep linear network lambda_hat was still rising after 2,000.
    slow (the step-up, where lambda_hat lives in those slow directions): as many draws as burn-in,
    since PILOT_TIME / c draws (a fraction of one relaxation time) left R-hat at 1.2-1.7."""
    burn = max(int(num_burnin), int(math.ceil(PILOT_TIME / step)), relax_steps(step, ratio))
    draws = max(100, int(math.ceil(PILOT_TIME / step)))
    return burn, max(draws, relax_steps(step, ratio)) if slow else draws


@dataclass(frozen=True)
class GammaPilot:
    """What the rule needs from one pilot: the usual stats, per-chain estimates, localization."""

    gamma: float
    stats: PilotStats
    llc_per_chain: tuple[float, ...]
    dist_ratio: float          # second-half / first-half mean |w - w*|^2 over the chains


@dataclass(frozen=True)
class GammaPoint:
    ratio: float               # g = gamma / nbeta
    pilot: GammaPilot
    usable: bool
    why: str                   # why not usable ("" when usable)
    rise: float                # lambda_hat here minus at the previous (stronger) gamma, chain-paired (NaN: first)
    rise_se: float             # its standard error


@dataclass
class GammaCalibration:
    """The record of one gamma calibration: every pilot, the pick and the reason (JSON via to_dict)."""

    gamma: float
    reason: str
    points: list[GammaPoint] = field(default_factory=list)
    epsilon: float = float("nan")    # the step the pilots ran at
    carried: bool = False
    pilot_chain_steps: int = 0
    settled: bool = False            # lambda_hat was shown to stop rising (not the budget's or the grid's end)
    steps_tried: tuple[float, ...] = ()   # c of every scan (more than one after a step-up)

    def to_dict(self) -> dict[str, Any]:
        """Strict JSON (non-finite numbers become None), as result stores and MLflow require."""
        return {"gamma": self.gamma, "reason": self.reason, "epsilon": _finite(self.epsilon), "carried": self.carried,
                "pilot_chain_steps": self.pilot_chain_steps, "settled": self.settled, "steps_tried": list(self.steps_tried),
                "points": [{"ratio": p.ratio, "gamma": p.pilot.gamma, "usable": p.usable, "why": p.why,
                            "rise": _finite(p.rise), "rise_se": _finite(p.rise_se),
                            "dist_ratio": _finite(p.pilot.dist_ratio),
                            **{k: _finite(v) for k, v in asdict(p.pilot.stats).items()}} for p in self.points]}


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def localized(pilot: GammaPilot) -> str:
    """'' when the pilot's traces pass and its chains stay near w*, else why not (one phrase)."""
    why = check(pilot.stats)
    if why:
        return why
    if not pilot.dist_ratio <= LOCAL_RATIO_MAX:
        return f"not localized: |w - w*|^2 grew {pilot.dist_ratio:.2f}x between halves"
    return ""


def unmixed(pilot: GammaPilot) -> bool:
    """Whether the pilot fails only on mixing (R-hat, drift): no chain diverged and they stay near w*."""
    stats = pilot.stats
    return bool(check(stats)) and not stats.chains_dropped and math.isfinite(stats.llc_mean) \
        and pilot.dist_ratio <= LOCAL_RATIO_MAX


def paired_rise(strong: GammaPilot, weak: GammaPilot) -> tuple[float, float]:
    """Mean and standard error of the chain-by-chain rise of lambda_hat from strong to weak gamma."""
    diffs = [b - a for a, b in zip(strong.llc_per_chain, weak.llc_per_chain, strict=True)
             if math.isfinite(a) and math.isfinite(b)]
    if not diffs:
        return math.nan, math.inf
    mean = sum(diffs) / len(diffs)
    if len(diffs) < 2:
        return mean, math.inf
    var = sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)
    return mean, math.sqrt(var / len(diffs))


def stopped_rising(rise: float, se: float, level: float) -> bool:
    """Whether the weaker gamma's lambda_hat (level) is shown to have risen by at most RISE_REL of itself."""
    return rise + RISE_SIGMAS * se <= RISE_REL * abs(level)


def calibrate_gamma(pilot: Callable[[float], GammaPilot], *, nbeta: float, epsilon: float,
                    cost: Callable[[float], int] = lambda g: 0, max_steps: int = MAX_PILOT_STEPS,
                    grid: tuple[float, ...] = GAMMA_GRID, skip_failures: bool = False) -> GammaCalibration:
    """Run pilot(gamma) down the grid until lambda_hat stops rising; return the pick.

    cost(g): steps per chain of the pilot at g; the scan ends before one above max_steps.
    A pilot that has not mixed (unmixed) is recorded and passed over; one that diverged or left w*
    ends the scan. skip_failures (the step-up): every failed pilot is passed over, since there the
    strong gammas' lambda_hat ~ 0 traces fail on noise alone."""
    points: list[GammaPoint] = []
    prev: GammaPoint | None = None

    def done(point: GammaPoint, reason: str, settled: bool = False) -> GammaCalibration:
        return GammaCalibration(gamma=point.pilot.gamma, reason=reason, points=points, epsilon=epsilon,
                                pilot_chain_steps=sum(p.pilot.stats.chain_steps for p in points), settled=settled)

    for g in grid:
        if cost(g) > max_steps and points:
            last = next((p for p in reversed(points) if p.usable), None)
            if last is not None:
                return done(last, (f"gamma/nbeta = {g:g} would need {cost(g)} steps per chain to relax (> {max_steps}); "
                                   f"took the weakest usable gamma/nbeta = {last.ratio:g}, lambda_hat still rising"))
            break
        run = pilot(g * nbeta)
        why = localized(run)
        rise, se = paired_rise(prev.pilot, run) if prev is not None and prev.usable and not why else (math.nan, math.nan)
        point = GammaPoint(ratio=g, pilot=run, usable=not why, why=why, rise=rise, rise_se=se)
        points.append(point)
        if why and (skip_failures or unmixed(run)):
            continue
        if why:
            if prev is not None and prev.usable:
                return done(prev, f"gamma/nbeta = {g:g} failed ({why}); took the last usable, gamma/nbeta = {prev.ratio:g}")
            prev = point
            continue
        if prev is not None and prev.usable and stopped_rising(rise, se, run.stats.llc_mean):
            return done(point, (f"lambda_hat stopped rising from gamma/nbeta = {prev.ratio:g} to {g:g} "
                                f"({prev.pilot.stats.llc_mean:.4g} -> {run.stats.llc_mean:.4g}, paired rise {rise:.3g} ± "
                                f"{se:.2g}) with converged, stationary, localized chains; took the weaker gamma"), settled=True)
        prev = point
    usable = [p for p in points if p.usable]
    if usable:
        return done(usable[-1], f"lambda_hat still rising at the end of the grid; took the weakest usable gamma/nbeta = {usable[-1].ratio:g}")
    return done(points[0], f"no gamma passed the checks (strongest: {points[0].why}); took the strongest grid gamma")


def carried_gamma(pilot: GammaPilot, *, nbeta: float, epsilon: float) -> GammaCalibration | None:
    """A GammaCalibration that keeps a carried gamma when the run's own traces pass and stay localized."""
    why = localized(pilot)
    if why:
        return None
    point = GammaPoint(ratio=pilot.gamma / nbeta, pilot=pilot, usable=True, why="", rise=math.nan, rise_se=math.nan)
    return GammaCalibration(gamma=pilot.gamma, points=[point], epsilon=epsilon, carried=True,
                            reason=f"carried gamma = {pilot.gamma:.3g} (gamma/nbeta = {point.ratio:.3g}); this run's traces "
                                   "pass and its chains stay localized")
