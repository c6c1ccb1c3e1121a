"""epsilon = "auto": a short pilot per step size on a log grid, and the rule that picks one.

The grid is in units of the dimensionless step c = eps * nbeta * s (s = 1 for SGLD, the
typical RMSProp preconditioner at w* for rmsprop_sgld): c is the step relative to a unit
curvature of the tempered loss, so the same grid fits models of any n. Scanning from large
to small c, a pilot is usable when no chain diverged, its traces converged (rank R-hat) and
they are stationary (no drift between halves). Large steps bias lambda_hat upwards, about in
proportion to c (measured: +40% at c = 0.1, +10% at 0.03, ~0 at 0.01 on a reduced-rank
regression), so the pick is where lambda_hat has stopped moving: the first pair of neighbouring
usable steps whose estimates agree (within AGREE_SIGMAS combined standard errors and within
AGREE_REL), and of that pair the smaller step (its bias is below the pair's disagreement).
Small steps move slowly: c is also the time one step covers (in relaxation times of a unit
curvature), so every run at c gets at least BURNIN_TIME / c burn-in steps and every pilot
PILOT_TIME / c draws: pilots of equal time, not equal steps, so their lambda_hat differ by
discretization, not by how far the chains got (with equal steps lambda_hat kept falling with c,
below the true value, instead of settling). Scanning
stops at the pick, so the cost is a few short pilots; a sweep pays it on a few checkpoints and
carries the pick (SGLDConfig.epsilon_hint), re-checked on each job's own traces.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

# Dimensionless steps c = eps * nbeta * s, scanned from large to small. Not below 0.01: there
# the discretization bias was within noise on every model we tried, while runs of affordable
# length at smaller c had not equilibrated (lambda_hat fell below the true value) and the
# pilots' cost grows as 1/c.
GRID = (3.0, 1.0, 0.3, 0.1, 0.03, 0.01)
R_HAT_MAX = 1.1          # rank R-hat (max of bulk and tail) a usable pilot stays below
DRIFT_Z_MAX = 3.0        # |second half - first half| in standard errors
AGREE_SIGMAS = 2.0       # neighbouring estimates agree within this many combined standard errors ...
AGREE_REL = 0.10         # ... and within this share of the smaller step's estimate
BURNIN_TIME = 10.0       # burn-in of a run at c: at least BURNIN_TIME / c steps
PILOT_TIME = 10.0        # draws of a pilot at c: PILOT_TIME / c (at least MIN_PILOT_DRAWS)
MIN_PILOT_DRAWS = 100


def burnin_for(num_burnin: int, step: float) -> int:
    """The burn-in a run at dimensionless step c = step needs (at least the configured one)."""
    return max(int(num_burnin), int(math.ceil(BURNIN_TIME / step)))


def pilot_draws(step: float) -> int:
    """Draws of a pilot at dimensionless step c = step: the same span of time at every c."""
    return max(MIN_PILOT_DRAWS, int(math.ceil(PILOT_TIME / step)))


@dataclass(frozen=True)
class PilotStats:
    """What the rule needs from one pilot run."""

    epsilon: float
    llc_mean: float
    llc_se: float             # standard error of llc_mean (from the pooled draws' spread and bulk ESS)
    r_hat: float
    drift_z: float
    chains_dropped: int
    chain_steps: int


@dataclass(frozen=True)
class CalibrationPoint:
    step: float               # c = eps * nbeta * s
    stats: PilotStats
    usable: bool
    why: str                  # why not usable ("" when usable)


@dataclass
class Calibration:
    """The record of one calibration: every pilot, the pick and the reason (JSON via to_dict)."""

    epsilon: float
    reason: str
    points: list[CalibrationPoint] = field(default_factory=list)
    scale: float = 1.0        # eps = c / (nbeta * scale)
    carried: bool = False     # the pick came from epsilon_hint and its traces passed
    pilot_chain_steps: int = 0
    num_burnin: int = 0       # the burn-in the run at the pick gets (burnin_for)

    def to_dict(self) -> dict[str, Any]:
        """Strict JSON (non-finite numbers become None), as result stores and MLflow require."""
        return {"epsilon": self.epsilon, "reason": self.reason, "scale": self.scale, "carried": self.carried,
                "pilot_chain_steps": self.pilot_chain_steps, "num_burnin": self.num_burnin,
                "points": [{"step": p.step, "usable": p.usable, "why": p.why,
                            **{k: _finite_or_none(v) for k, v in asdict(p.stats).items()}} for p in self.points]}


def _finite_or_none(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def check(stats: PilotStats) -> str:
    """'' when the traces pass, else why not (one phrase)."""
    if stats.chains_dropped:
        return f"{stats.chains_dropped} chain(s) diverged"
    if not math.isfinite(stats.llc_mean):
        return "no estimate"
    if not stats.r_hat < R_HAT_MAX:
        return f"R-hat {stats.r_hat:.3g} >= {R_HAT_MAX:g}"
    if not stats.drift_z < DRIFT_Z_MAX:
        return f"drift between halves {stats.drift_z:.1f} standard errors"
    return ""


def agree(big: PilotStats, small: PilotStats) -> bool:
    """Whether two neighbouring pilots' estimates agree (lambda_hat has stopped moving)."""
    gap = abs(big.llc_mean - small.llc_mean)
    return gap <= AGREE_SIGMAS * math.hypot(big.llc_se, small.llc_se) and gap <= AGREE_REL * abs(small.llc_mean)


def calibrate(pilot: Callable[[float], PilotStats], *, nbeta: float, scale: float = 1.0,
              grid: tuple[float, ...] = GRID) -> Calibration:
    """Run pilot(eps) down the grid until two neighbouring usable steps agree; return the pick."""
    points: list[CalibrationPoint] = []
    prev: CalibrationPoint | None = None
    for c in grid:
        stats = pilot(c / (nbeta * scale))
        why = check(stats)
        point = CalibrationPoint(step=c, stats=stats, usable=not why, why=why)
        points.append(point)
        if point.usable and prev is not None and prev.usable and agree(prev.stats, stats):
            return Calibration(
                epsilon=stats.epsilon, scale=scale, points=points,
                pilot_chain_steps=sum(p.stats.chain_steps for p in points),
                reason=(f"eps*nbeta*s = {c:g} and {prev.step:g} agree (lambda_hat {stats.llc_mean:.4g} ± "
                        f"{stats.llc_se:.2g} vs {prev.stats.llc_mean:.4g} ± {prev.stats.llc_se:.2g}) with converged, "
                        "stationary traces; took the smaller step"))
        prev = point
    usable = [p for p in points if p.usable]
    steps = sum(p.stats.chain_steps for p in points)
    if usable:
        best = usable[-1]
        return Calibration(epsilon=best.stats.epsilon, scale=scale, points=points, pilot_chain_steps=steps,
                           reason=f"no two neighbouring steps agreed; took the smallest usable step (eps*nbeta*s = {best.step:g})")
    last = points[-1]
    return Calibration(epsilon=last.stats.epsilon, scale=scale, points=points, pilot_chain_steps=steps,
                       reason=f"no step passed the checks (smallest: {last.why}); took the smallest grid step")


def carried(stats: PilotStats, *, nbeta: float, scale: float) -> Calibration | None:
    """A Calibration that keeps a carried step when the run's own traces pass, else None."""
    why = check(stats)
    if why:
        return None
    c = stats.epsilon * nbeta * scale
    return Calibration(epsilon=stats.epsilon, scale=scale, carried=True,
                       points=[CalibrationPoint(step=c, stats=stats, usable=True, why="")],
                       reason=f"carried eps = {stats.epsilon:.3g} (eps*nbeta*s = {c:.3g}); this run's traces pass "
                              f"(R-hat {stats.r_hat:.3g}, drift {stats.drift_z:.1f} standard errors, no divergence)")
