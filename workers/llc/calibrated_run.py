"""The run at the configured epsilon and gamma, or at the ones epsilon="auto" / gamma="auto" pick.

How auto calibration is driven, in one place: which pilots run through the estimate's ChainRunner
(chain_runner.py), in what order, with what burn-in and draws, and which run becomes the result.
The pick rules themselves are calibration.py's (epsilon) and localization.py's (gamma).

- epsilon="auto" (CalibratedRun.at_epsilon): a carried epsilon_hint is kept when its own run's
  traces pass; else pilots down calibration.GRID, then the run at the pick.
- gamma="auto" (CalibratedRun.scanned): the gamma pilots at one step (the configured epsilon, or
  localization.PILOT_STEP with epsilon="auto"); with epsilon="auto" and no usable pilot there,
  the step-up (_step_up) rescans at localization.STEP_UP. The run is at the pick, and is the
  picked pilot itself when that pilot holds the run's burn-in and draws (same seed and step).
- gamma_hint (CalibratedRun.from_gamma_hint): the run at the hint, kept when its traces pass,
  else the scan.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from .calibration import Calibration, CalibrationPoint, PilotStats, burnin_for, calibrate, carried, pilot_draws
from .chain_runner import ChainRunner
from .chains import ChainRecords
from .config import AUTO, SGLDConfig
from .localization import (PILOT_STEP, STEP_UP, GammaCalibration, GammaPilot, calibrate_gamma, carried_gamma,
                           pilot_steps, relax_steps)
from .result import LLCResult
from .steppers import SequentialStepper


@dataclass(kw_only=True)
class CalibratedRun:
    """One estimate's calibration and run; result() is its LLCResult.

    scale is s of the dimensionless step c = eps * nbeta * s (precondition_scale). The gamma
    pilots' chains are kept by (gamma, eps) so the run at the picked gamma can be its pilot."""

    runner: ChainRunner
    cfg: SGLDConfig
    scale: float
    progress: Callable[[int, int], None] | None = None
    pilots: dict[tuple[float, float], tuple[ChainRecords, SGLDConfig, float]] = field(default_factory=dict, init=False)

    def result(self) -> LLCResult:
        """The estimate: at cfg's numeric steps, or after the calibration cfg's "auto" values ask for."""
        if self.cfg.gamma != AUTO:
            return self.at_epsilon(self.cfg)
        if self.cfg.gamma_hint is None:
            return self.scanned()
        return self.from_gamma_hint()

    @property
    def nbeta(self) -> float:
        return self.runner.nbeta

    def at_epsilon(self, gcfg: SGLDConfig) -> LLCResult:
        """The estimate at gcfg's (numeric) gamma: at its epsilon, or epsilon="auto" calibrated there."""
        calibration: Calibration | None = None
        run_cfg = gcfg
        if gcfg.epsilon == AUTO:
            pilot_cfg = replace(gcfg, epsilon=1.0, epsilon_hint=None)
            if gcfg.epsilon_hint is not None:
                hinted = self._at_step(gcfg, float(gcfg.epsilon_hint))
                records, seconds = self.runner.sample(hinted, _progress(self.progress, hinted))
                res = self.runner.summarize(records, hinted, seconds)
                calibration = carried(_pilot_stats(res), nbeta=self.nbeta, scale=self.scale)
                if calibration is not None:
                    calibration.num_burnin = hinted.num_burnin
                    return _with_calibration(res, calibration)
            calibration = calibrate(lambda eps: self._run_epsilon_pilot(pilot_cfg, eps), nbeta=self.nbeta,
                                    scale=self.scale)
            run_cfg = self._at_step(gcfg, calibration.epsilon)
            calibration.num_burnin = run_cfg.num_burnin
        records, sampling_s = self.runner.sample(run_cfg, _progress(self.progress, run_cfg))
        if self.progress is not None:
            self.progress(run_cfg.num_chains * run_cfg.num_steps, run_cfg.num_chains * run_cfg.num_steps)
        res = self.runner.summarize(records, run_cfg, sampling_s)
        return _with_calibration(res, calibration) if calibration is not None else res

    def _at_step(self, run_cfg: SGLDConfig, eps: float) -> SGLDConfig:
        """run_cfg at eps, with the burn-in that step needs."""
        return replace(run_cfg, epsilon=eps, num_burnin=burnin_for(run_cfg.num_burnin, eps * self.nbeta * self.scale))

    def _run_epsilon_pilot(self, pilot_cfg: SGLDConfig, eps: float) -> PilotStats:
        run = replace(self._at_step(pilot_cfg, eps), num_draws=pilot_draws(eps * self.nbeta * self.scale))
        records, seconds = self.runner.sample(run, None)
        return _pilot_stats(self.runner.summarize(records, run, seconds))

    # gamma="auto": pilots at one step (the configured one, or with epsilon="auto" the epsilon grid's
    # smallest, where discretization bias was within noise on every model tried), all with one seed.
    # The run at the pick uses that step too: its pilot has just shown the traces pass there.
    @property
    def pilot_eps(self) -> float:
        return float(self.cfg.epsilon) if self.cfg.epsilon != AUTO else PILOT_STEP / (self.nbeta * self.scale)

    @property
    def pilot_c(self) -> float:
        return self.pilot_eps * self.nbeta * self.scale

    def gamma_scan(self, c: float, *, slow: bool = False) -> GammaCalibration:
        """The gamma scan with every pilot at dimensionless step c (slow: the step-up's pilots)."""
        # The floor: exactly the configured step.
        eps = self.pilot_eps if c == self.pilot_c else c / (self.nbeta * self.scale)
        cal = calibrate_gamma(lambda gamma: self._run_gamma_pilot(gamma, c=c, eps=eps, slow=slow), nbeta=self.nbeta,
                              epsilon=eps, skip_failures=slow,
                              cost=lambda g: sum(pilot_steps(self.cfg.num_burnin, c, g, slow=slow)),
                              max_steps=self.cfg.gamma_pilot_steps)
        return replace(cal, steps_tried=(c,))

    def _run_gamma_pilot(self, gamma: float, *, c: float, eps: float, slow: bool) -> GammaPilot:
        burn, draws = pilot_steps(self.cfg.num_burnin, c, gamma / self.nbeta, slow=slow)
        run = replace(self.cfg, epsilon=eps, gamma=gamma, num_burnin=burn, num_draws=draws, epsilon_hint=None,
                      gamma_hint=None)
        records, seconds = self.runner.sample(run, None, track_distance=True)
        self.pilots[(gamma, eps)] = (records, run, seconds)
        return _gamma_pilot(self.runner.summarize(records, run, seconds), records)

    def at_gamma(self, gamma: float, eps: float) -> LLCResult:
        """The run at gamma and a numeric eps, with the burn-in the localization needs to relax there.

        Every gamma pilot's chains are the same seed's at the same step as this run's, so a pilot
        with at least the run's burn-in and draws already holds it (and more draws): it is the run."""
        c = eps * self.nbeta * self.scale
        run = replace(self.cfg, gamma=gamma, epsilon=eps, epsilon_hint=None, gamma_hint=None,
                      num_burnin=max(burnin_for(self.cfg.num_burnin, c), relax_steps(c, gamma / self.nbeta)))
        held = self.pilots.get((gamma, eps))
        if held is not None and held[1].num_burnin >= run.num_burnin and held[1].num_draws >= run.num_draws:
            records, pilot_run, seconds = held          # its chains are cfg's: same count and seeds
            if self.progress is not None:
                self.progress(run.num_chains * run.num_steps, run.num_chains * run.num_steps)
            res = self.runner.summarize(records, pilot_run, seconds)
            res.notes["gamma_pilot_reused"] = (f"the picked gamma's pilot ({pilot_run.num_draws} draws after "
                                               f"{pilot_run.num_burnin} burn-in per chain, the same seed and step) "
                                               f"is the run: it holds the {run.num_draws}-draw run's chains and more")
            return res
        return self.at_epsilon(run)

    def scanned(self) -> LLCResult:
        """gamma="auto" without a (kept) hint: the scan, the step-up if needed, the run at the pick."""
        cfg, nbeta, scale, pilot_eps, pilot_c = self.cfg, self.nbeta, self.scale, self.pilot_eps, self.pilot_c
        cal = self.gamma_scan(pilot_c)
        if cfg.epsilon == AUTO and not any(p.usable for p in cal.points):
            cal = _step_up(cal, self.gamma_scan)
        c = cal.epsilon * nbeta * scale
        res = _with_gamma_calibration(self.at_gamma(cal.gamma, cal.epsilon), cal)
        if cfg.epsilon == AUTO:
            pick = next(p for p in reversed(cal.points) if p.pilot.gamma == cal.gamma and p.pilot.stats.epsilon == cal.epsilon)
            where = ("the epsilon grid's smallest step" if cal.epsilon == pilot_eps
                     else f"raised from {pilot_c:g}, where no gamma pilot passed")
            res = _with_calibration(res, Calibration(
                epsilon=cal.epsilon, scale=scale, num_burnin=_burnin_of(res),
                points=[CalibrationPoint(step=c, stats=pick.pilot.stats, usable=pick.usable, why=pick.why)],
                reason=(f"gamma=auto: the gamma pilots ran at eps*nbeta*s = {c:g} ({where}) "
                        + ("and the picked gamma's pilot passed there" if pick.usable
                           else f"and the picked gamma's pilot failed there too ({pick.why})"))))
        return res

    def from_gamma_hint(self) -> LLCResult:
        """A carried gamma (and, with epsilon="auto", a carried step or the pilots' one) is kept when this
        run's own traces pass; the distance is not tracked in a full run, so the loss traces judge."""
        cfg, nbeta = self.cfg, self.nbeta
        hint_eps = self.pilot_eps if cfg.epsilon != AUTO or cfg.epsilon_hint is None else float(cfg.epsilon_hint)
        need = relax_steps(hint_eps * nbeta * self.scale, float(cfg.gamma_hint) / nbeta)
        if need > cfg.gamma_pilot_steps:
            # A hint this weak for this step would burn in longer than any pilot may (and its trace
            # could outgrow memory): the scan's budget decides instead.
            res = self.scanned()
            res.notes["gamma_hint"] = (f"gamma_hint = {float(cfg.gamma_hint):.3g} not tried: at eps*nbeta*s = "
                                       f"{hint_eps * nbeta * self.scale:.3g} it needs {need} burn-in steps per chain "
                                       f"(> gamma_pilot_steps = {cfg.gamma_pilot_steps}); scanned instead")
            return res
        res = self.at_gamma(float(cfg.gamma_hint), hint_eps)
        kept = carried_gamma(GammaPilot(gamma=float(cfg.gamma_hint), stats=_pilot_stats(res),
                                        llc_per_chain=tuple(res.llc_per_chain), dist_ratio=1.0),
                             nbeta=nbeta, epsilon=hint_eps)
        if kept is None:
            return self.scanned()
        res = _with_gamma_calibration(res, kept)
        if cfg.epsilon == AUTO:
            eps_kept = carried(_pilot_stats(res), nbeta=nbeta, scale=self.scale)
            if eps_kept is not None:
                eps_kept.num_burnin = _burnin_of(res)
                res = _with_calibration(res, eps_kept)
        return res


def precondition_scale(cfg: SGLDConfig, seq: SequentialStepper, probe: Any, flat0: torch.Tensor) -> float:
    """s in the calibration grid: 1 for SGLD; for rmsprop_sgld the median preconditioner at w*."""
    if cfg.method == "sgld":
        return 1.0
    _, grad = seq.loss_and_grad(flat0.unsqueeze(0), probe)
    precond = 1.0 / (grad.double().abs() + 1e-8)
    return float(precond.median())


def _step_up(floor: GammaCalibration, scan: Callable[..., GammaCalibration]) -> GammaCalibration:
    """No gamma pilot passed at the floor step: rescan at the larger STEP_UP steps (localization.py).

    Each rung's pilots are slow ones (draws as long as their burn-in); the step goes up until a
    rung's scan shows lambda_hat stopped rising, or to the top rung, since a larger step reaches a
    weaker gamma within the budget. The pick is the last rung with a usable pilot (the floor's
    record when none has one); the record holds every rung's pilots."""
    points, steps, tried = list(floor.points), floor.pilot_chain_steps, list(floor.steps_tried)
    best: GammaCalibration | None = None
    for c in STEP_UP:
        rung = scan(c, slow=True)
        points += rung.points
        steps += rung.pilot_chain_steps
        tried.append(c)
        if any(p.usable for p in rung.points):
            best = rung
            if rung.settled:
                break
    why = floor.points[0].why if floor.points else ""
    if best is None:
        return replace(floor, points=points, pilot_chain_steps=steps, steps_tried=tuple(tried),
                       reason=f"{floor.reason}; no gamma pilot passed at the larger steps {', '.join(f'{c:g}' for c in STEP_UP)} either")
    c = best.steps_tried[0]
    return replace(best, points=points, pilot_chain_steps=steps, steps_tried=tuple(tried),
                   reason=(f"no gamma pilot passed at eps*nbeta*s = {floor.steps_tried[0]:g} (e.g. {why}): "
                           f"the pilots' step went up to {c:g}; there: {best.reason}"))


def _burnin_of(res: LLCResult) -> int:
    """The burn-in steps per chain of a finished run (its steps minus its draws)."""
    return int(res.diagnostics["num_burnin"])


def _progress(progress: Callable[[int, int], None] | None, cfg: SGLDConfig) -> Callable[[int], None] | None:
    """Chain-step ticks -> progress(done, total) for one run of cfg's size."""
    if progress is None:
        return None
    total = cfg.num_chains * cfg.num_steps
    done = 0

    def tick(k: int) -> None:
        nonlocal done
        done = min(total, done + k)
        progress(done, total)

    return tick


def _pilot_stats(res: LLCResult) -> PilotStats:
    """What the pick rules read of a finished run (a pilot's, or a hinted run's)."""
    d = res.diagnostics
    ok = ~np.asarray(res.chain_diverged, dtype=bool)
    delta = res.nbeta * (res.loss_trace[ok] - res.baseline_trace[ok])
    ess = float(d["ess_bulk"])
    se = float(delta.std(ddof=1) / math.sqrt(ess)) if delta.size >= 2 and ess > 0 else float("inf")
    return PilotStats(epsilon=float(res.diagnostics["epsilon"]), llc_mean=float(res.llc_mean), llc_se=se,
                      r_hat=float(d["r_hat"]), drift_z=float(d["drift_z"]), chains_dropped=int(d["chains_dropped"]),
                      chain_steps=int(d["chain_steps"]))


def _gamma_pilot(res: LLCResult, records: ChainRecords) -> GammaPilot:
    """A gamma pilot's stats, per-chain estimates and how far its chains moved between halves."""
    ok = ~np.asarray(res.chain_diverged, dtype=bool)
    dist = records.dist2[ok]
    half = dist.shape[1] // 2
    first, second = (float(np.nanmean(dist[:, :half])), float(np.nanmean(dist[:, half:]))) if dist.size and half else (math.nan, math.nan)
    ratio = second / first if first > 0 else (1.0 if first == second == 0 else math.inf)
    return GammaPilot(gamma=float(res.diagnostics["gamma"]), stats=_pilot_stats(res),
                      llc_per_chain=tuple(float(x) for x in res.llc_per_chain), dist_ratio=ratio)


def _with_gamma_calibration(res: LLCResult, calibration: GammaCalibration) -> LLCResult:
    res.gamma_calibration = calibration.to_dict()
    return _note_calibration(res, "gamma", calibration.gamma, calibration)


def _with_calibration(res: LLCResult, calibration: Calibration) -> LLCResult:
    res.calibration = calibration.to_dict()
    return _note_calibration(res, "epsilon", calibration.epsilon, calibration)


def _note_calibration(res: LLCResult, name: str, pick: float, calibration: Calibration | GammaCalibration) -> LLCResult:
    """diagnostics {name}_carried and its pilots' cost (epsilon's keeps its older key), notes[name]."""
    res.diagnostics[f"{name}_carried"] = calibration.carried
    res.diagnostics["calibration_chain_steps" if name == "epsilon" else f"{name}_calibration_chain_steps"] = \
        calibration.pilot_chain_steps
    res.notes[name] = f"auto: {pick:.3g} ({calibration.reason})"
    return res
