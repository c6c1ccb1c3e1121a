"""estimate_llc: validate inputs, pick the chain path, run SGLD, summarize.

lambda_hat_chain = nbeta * mean over draws of (L_m(w_t) - baseline_t). Diverged chains are
never averaged in: llc_mean is over non-diverged chains (NaN when all diverged), their
per-chain value is NaN, and `diverged` / diagnostics["num_diverged"] say so.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from .accumulate import AccumulatingStepper
from .baselines import constant_baseline, item_loss_table
from .calibration import Calibration, CalibrationPoint, PilotStats, burnin_for, calibrate, carried, pilot_draws
from .chains import ChainRecords, run_group
from .checkpointing import Checkpointing, enable_checkpointing
from .components import resolve_selection
from .config import AUTO, SGLDConfig
from .data import BatchSource, IndexStream, chain_generator
from .localization import (PILOT_STEP, STEP_UP, GammaCalibration, GammaPilot, calibrate_gamma, carried_gamma,
                           pilot_steps, relax_steps)
from .diagnostics import drift_z, ess_bulk, ess_tail, r_hat_bulk, r_hat_tail
from .memory import MemoryEstimate, MemoryPlan, free_memory, measure_activations, plan_memory
from .result import LLCResult
from .sgld import SGLDStep
from .steppers import (InPlaceStepper, LossFn, LossModule, ParamLayout, SequentialStepper, VectorizedStepper,
                       adopt_parameters)

# On CPU, above this many FLOPs per chain-step the work is compute-bound and vmapped
# (batched) kernels ran slower than one chain at a time (benchmarks/estimator.py (b):
# 1.9 GFLOP/step, 121 s vectorized vs 70 s sequential); below it, vmap's saved Python
# overhead wins (benchmark (a): 1.8x). GPUs always take the vectorized path.
_CPU_SEQUENTIAL_FLOPS = 50e6
# compile=None compiles CPU jobs whose SGLD steps add up to this many FLOPs (~30 s eager at the
# ~30 GFLOP/s eager reaches on the GPT-2 benchmark): the one-off compile (10-15 s for a small
# transformer, then cached on disk by torch) is then repaid at ×1.4 per step (benchmark (b):
# 1.3 TFLOP, eager 40-44 s, compiled 42 s cold / 27 s warm). GPUs compile only when asked.
_AUTO_COMPILE_FLOPS = 1e12


def _resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _select_params(model: nn.Module, selectors: tuple[str, ...] | None) -> list[tuple[str, torch.Tensor, torch.Tensor | None]]:
    """(name, parameter, bool mask or None for the whole tensor) of what is sampled (components.py)."""
    for name, p in model.named_parameters():
        if p.is_floating_point() and not torch.isfinite(p.detach()).all():
            raise ValueError(f"Model parameter {name!r} contains NaN or inf values; load a valid checkpoint (w*) before estimating the LLC.")
    params = dict(model.named_parameters())
    selection = resolve_selection(model, selectors)
    if not selection:
        raise ValueError("Nothing to sample: the model has no floating-point parameters.")
    return [(n, params[n], mask) for n, mask in selection.items()]


def _master_dtype(dtypes: list[torch.dtype]) -> torch.dtype:
    if any(d == torch.float64 for d in dtypes):
        return torch.float64
    return torch.float32


def _check_loss(value: Any, where: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.ndim != 0 or not value.is_floating_point():
        got = f"a tensor of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"loss_fn(model, batch) must return a scalar floating-point tensor (the mean loss over the batch), but it returned {got} {where}.")
    if not torch.isfinite(value):
        raise ValueError(f"loss_fn returned a non-finite loss ({value.item()}) at w* {where}; check the checkpoint weights and the dataset.")
    return value


def _dataset_len(dataset: Dataset) -> int:
    try:
        n = len(dataset)  # type: ignore[arg-type]
    except TypeError as exc:
        raise ValueError("The dataset must be a map-style torch Dataset with __len__ and __getitem__; iterable datasets are not supported.") from exc
    if n == 0:
        raise ValueError("The dataset is empty: LLC estimation needs at least batch_size items.")
    return n


def estimate_llc(model: nn.Module, loss_fn: LossFn, dataset: Dataset, *, config: SGLDConfig | None = None,
                 device: str | torch.device = "cpu",
                 progress: Callable[[int, int], None] | None = None) -> LLCResult:
    """Estimate the local learning coefficient of `model` at its current weights w*.

    loss_fn(model, batch) -> mean loss (scalar tensor), batch = default collate of items.
    The model is left unchanged (it is run in eval mode and its mode restored; its parameters'
    values, requires_grad and .grad are restored, though sampled parameters may end up as views
    of one flat buffer: one chain at a time runs in the model's own parameters, InPlaceStepper).
    progress(done_chain_steps, total_chain_steps) is called after every step.
    """
    cfg = config or SGLDConfig()
    dev = _resolve_device(device)
    n = _dataset_len(dataset)
    if cfg.batch_size > n:
        raise ValueError(f"batch_size={cfg.batch_size} is larger than the dataset ({n} items); lower batch_size or use more data.")
    chosen = _select_params(model, cfg.sample_params)
    nbeta = float(cfg.nbeta) if cfg.nbeta is not None else (n / math.log(n) if n > 1 else 1.0)

    was_training = model.training
    model.eval()
    cleanup: list[Callable[[], None]] = []
    try:
        ckpt = enable_checkpointing(model) if cfg.activation_checkpointing else None
        if ckpt is not None:
            cleanup.append(ckpt.restore)
        return _estimate(model, loss_fn, dataset, cfg=cfg, dev=dev, n=n, chosen=chosen, nbeta=nbeta, progress=progress,
                         cleanup=cleanup, ckpt=ckpt,
                         can_checkpoint=bool(getattr(model, "supports_gradient_checkpointing", False)))
    finally:
        for undo in cleanup:
            undo()
        model.train(was_training)


def _estimate(model: nn.Module, loss_fn: LossFn, dataset: Dataset, *, cfg: SGLDConfig, dev: torch.device, n: int,
              chosen: list[tuple[str, torch.Tensor, torch.Tensor | None]], nbeta: float,
              progress: Callable[[int, int], None] | None, cleanup: list[Callable[[], None]],
              ckpt: Checkpointing | None = None, can_checkpoint: bool = False) -> LLCResult:
    started, cpu_started = time.perf_counter(), time.process_time()
    module = LossModule(model, loss_fn)
    star: dict[str, torch.Tensor] = {f"model.{k}": v.detach().to(dev) for k, v in model.named_parameters()}
    star.update({f"model.{k}": v.detach().to(dev) for k, v in model.named_buffers()})
    layout = _layout(chosen, star, dev)
    frozen = {k: v for k, v in star.items() if k not in set(layout.names)}
    flat0 = torch.cat([(star[k].reshape(-1)[i] if i is not None else star[k].reshape(-1)).to(layout.dtype)
                       for k, i in zip(layout.names, layout.index, strict=True)])

    total_steps = cfg.num_steps
    source = BatchSource(dataset, n, dev, expected_items=cfg.num_chains * total_steps * cfg.batch_size)
    probe = source.gather(torch.arange(cfg.batch_size))
    native = all(t is not None and v.data_ptr() == t.data_ptr() for k, v in star.items()
                 for t in [dict(module.named_parameters(remove_duplicate=False)).get(k, dict(module.named_buffers()).get(k))])
    # Whole fp32/fp64 tensors of a model on the device: its parameters become views of one flat
    # buffer (no extra copy: the old storages are freed), which one chain at a time can use as its
    # state (InPlaceStepper); w* is flat0 from here on.
    sampled_params = [p for _, p, _ in chosen]
    chain_buf: torch.Tensor | None = None
    if native and all(i is None for i in layout.index) and all(d == layout.dtype for d in layout.dtypes):
        star.update(layout.split(flat0))
        chain_buf = adopt_parameters(sampled_params, flat0, list(layout.sizes))
        native = False
    common = dict(module=module, layout=layout, frozen=frozen, star=star, device=dev,
                  star_is_native=native, compile=False)
    seq = SequentialStepper(**common)
    seq.backward_in_call = ckpt is not None
    with torch.no_grad():
        probe_loss = _check_loss(seq._call(layout.split(flat0), probe), "on the first batch")
        _refuse_sum_loss(seq, source, layout.split(flat0), probe_loss, cfg.batch_size)
    # FLOPs per chain-step steer two CPU choices: sequential vs vmapped chains, and auto-compile;
    # they are counted on the memory plan's probe (a probe of its own cost a gradient copy).
    wants_flops = dev.type == "cpu" and (cfg.compile is None or (cfg.vectorize is None and cfg.num_chains > 1))
    plan, flops = _memory_plan(cfg, seq, source, flat0, star, dev, in_place=chain_buf is not None and cfg.compile is not True,
                               count_flops=wants_flops, sampled=sampled_params, ckpt=ckpt,
                               can_checkpoint=can_checkpoint)
    seq.drop_grad_buffer()        # the probe's: the chains allocate their own
    compile_steps, compile_note = _want_compile(cfg, dev, flops)
    if compile_steps and cfg.compile is None and plan.estimate.in_place and plan.chains_per_group == 1 and \
            replace(plan.estimate, in_place=False, compiled=True).peak(
                chains=1, batch=cfg.batch_size // plan.micro_batches,
                accumulate=plan.micro_batches > 1) > plan.budget_bytes:
        compile_steps, compile_note = False, "not compiled: only the in-place eager chain fits the memory budget"
    if compile_steps:
        common["compile"] = True
        seq.enable_compile()

    stepper, fallback_reason = _choose_stepper(cfg, common, seq, source, flat0, probe_loss, dev, flops, plan)
    if stepper.path == "sequential" and plan.chains_per_group > 1:      # one chain at a time needs less
        plan = plan_memory(plan.estimate, num_chains=cfg.num_chains, batch_size=cfg.batch_size,
                           budget=plan.budget_bytes, vectorize=False)
    if stepper is seq and not seq.compiled and chain_buf is not None:
        stepper = InPlaceStepper(chain=chain_buf, params=sampled_params, micro_batches=plan.micro_batches, **common)
        cleanup.append(lambda: stepper.release(flat0))
    elif plan.chains_per_group == 1 and (plan.estimate.in_place or stepper.compiled):   # compiled: not in place
        plan = plan_memory(replace(plan.estimate, in_place=False, compiled=stepper.compiled), num_chains=cfg.num_chains,
                           batch_size=cfg.batch_size, budget=plan.budget_bytes, vectorize=False)
    baseline_const = constant_baseline(cfg, seq, source, n)
    paired: Any | None = None
    baseline_method = "constant"
    if cfg.baseline == "paired":
        vec_for_table = stepper if stepper.path == "vectorized" else VectorizedStepper(**{**common, "compile": False})
        table, baseline_method = item_loss_table(vec_stepper=vec_for_table, seq_stepper=seq, source=source, n=n,
                                                 cfg=cfg, probe_loss=probe_loss)
        paired = table if table is not None else stepper

    def sample(run_cfg: SGLDConfig, report: Callable[[int], None] | None,
               track_distance: bool = False) -> tuple[ChainRecords, float]:
        """Run run_cfg's chains at its (numeric) epsilon and gamma; the records and the sampling seconds."""
        step = SGLDStep(epsilon=float(run_cfg.epsilon), gamma=float(run_cfg.gamma), nbeta=nbeta, method=run_cfg.method,
                        rmsprop_alpha=run_cfg.rmsprop_alpha)
        records = ChainRecords(run_cfg.num_chains, run_cfg.num_draws)
        streams = [IndexStream(n, run_cfg.batch_size, chain_generator(run_cfg.seed, c, 0)) for c in range(run_cfg.num_chains)]
        noise = [chain_generator(run_cfg.seed, c, 1, dev) for c in range(run_cfg.num_chains)]
        t0 = time.perf_counter()
        size = plan.chains_per_group if stepper.path == "vectorized" else 1
        groups = [list(range(c, min(c + size, run_cfg.num_chains))) for c in range(0, run_cfg.num_chains, size)]
        # The in-place chain accumulates micro-batches into its own gradient buffer.
        accumulate = plan.micro_batches > 1 and not isinstance(stepper, InPlaceStepper)
        steps_by = AccumulatingStepper(stepper, plan.micro_batches) if accumulate else stepper
        for g in groups:
            run_group(stepper=steps_by, source=source, chains=g, streams=[streams[c] for c in g],
                      noise_gens=[noise[c] for c in g], flat0=flat0, cfg=run_cfg, step=step, paired=paired,
                      records=records, progress=report or (lambda k: None), track_distance=track_distance)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return records, time.perf_counter() - t0

    def summarize(records: ChainRecords, run_cfg: SGLDConfig, sampling_s: float) -> LLCResult:
        return _summarize(records, cfg=run_cfg, nbeta=nbeta, n=n, baseline_const=baseline_const, path=stepper.path,
                          fallback_reason=fallback_reason, sampling_s=sampling_s,
                          wall_s=time.perf_counter() - started, cpu_s=time.process_time() - cpu_started,
                          num_sampled=layout.numel, device=str(dev),
                          stepper=stepper, baseline_method=baseline_method, compile_note=compile_note,
                          loss_wstar=_loss_wstar(cfg, paired, baseline_const), plan=plan)

    scale = _precondition_scale(cfg, seq, probe, flat0) if AUTO in (cfg.epsilon, cfg.gamma) else 1.0

    def at_epsilon(gcfg: SGLDConfig) -> LLCResult:
        """The estimate at gcfg's (numeric) gamma: at its epsilon, or epsilon="auto" calibrated there."""
        calibration: Calibration | None = None
        run_cfg = gcfg
        if gcfg.epsilon == AUTO:
            pilot_cfg = replace(gcfg, epsilon=1.0, epsilon_hint=None)

            def at(run_cfg: SGLDConfig, eps: float) -> SGLDConfig:
                """run_cfg at eps, with the burn-in that step needs."""
                return replace(run_cfg, epsilon=eps, num_burnin=burnin_for(run_cfg.num_burnin, eps * nbeta * scale))

            def pilot(eps: float) -> PilotStats:
                run = replace(at(pilot_cfg, eps), num_draws=pilot_draws(eps * nbeta * scale))
                records, seconds = sample(run, None)
                return _pilot_stats(summarize(records, run, seconds))

            if gcfg.epsilon_hint is not None:
                hinted = at(gcfg, float(gcfg.epsilon_hint))
                records, seconds = sample(hinted, _progress(progress, hinted))
                res = summarize(records, hinted, seconds)
                calibration = carried(_pilot_stats(res), nbeta=nbeta, scale=scale)
                if calibration is not None:
                    calibration.num_burnin = hinted.num_burnin
                    return _with_calibration(res, calibration)
            calibration = calibrate(pilot, nbeta=nbeta, scale=scale)
            run_cfg = at(gcfg, calibration.epsilon)
            calibration.num_burnin = run_cfg.num_burnin
        records, sampling_s = sample(run_cfg, _progress(progress, run_cfg))
        if progress is not None:
            progress(run_cfg.num_chains * run_cfg.num_steps, run_cfg.num_chains * run_cfg.num_steps)
        res = summarize(records, run_cfg, sampling_s)
        return _with_calibration(res, calibration) if calibration is not None else res

    if cfg.gamma != AUTO:
        return at_epsilon(cfg)
    # gamma="auto": pilots at one step (the configured one, or with epsilon="auto" the epsilon grid's
    # smallest, where discretization bias was within noise on every model tried), all with one seed.
    # The run at the pick uses that step too: its pilot has just shown the traces pass there.
    pilot_eps = float(cfg.epsilon) if cfg.epsilon != AUTO else PILOT_STEP / (nbeta * scale)
    pilot_c = pilot_eps * nbeta * scale

    # Every gamma pilot's chains, by (gamma, eps): the run at the pick is the same seed's chains at the
    # same step, so a pilot with at least the run's burn-in and draws already holds it (and more draws).
    pilots: dict[tuple[float, float], tuple[ChainRecords, SGLDConfig, float]] = {}

    def gamma_scan(c: float, *, slow: bool = False) -> GammaCalibration:
        """The gamma scan with every pilot at dimensionless step c (slow: the step-up's pilots)."""
        eps = pilot_eps if c == pilot_c else c / (nbeta * scale)   # the floor: exactly the configured step

        def gamma_pilot(gamma: float) -> GammaPilot:
            burn, draws = pilot_steps(cfg.num_burnin, c, gamma / nbeta, slow=slow)
            run = replace(cfg, epsilon=eps, gamma=gamma, num_burnin=burn, num_draws=draws, epsilon_hint=None,
                          gamma_hint=None)
            records, seconds = sample(run, None, track_distance=True)
            pilots[(gamma, eps)] = (records, run, seconds)
            return _gamma_pilot(summarize(records, run, seconds), records)

        cal = calibrate_gamma(gamma_pilot, nbeta=nbeta, epsilon=eps, skip_failures=slow,
                              cost=lambda g: sum(pilot_steps(cfg.num_burnin, c, g, slow=slow)),
                              max_steps=cfg.gamma_pilot_steps)
        return replace(cal, steps_tried=(c,))

    def at_gamma(gamma: float, eps: float) -> LLCResult:
        """The run at gamma and a numeric eps, with the burn-in the localization needs to relax there."""
        c = eps * nbeta * scale
        run = replace(cfg, gamma=gamma, epsilon=eps, epsilon_hint=None, gamma_hint=None,
                      num_burnin=max(burnin_for(cfg.num_burnin, c), relax_steps(c, gamma / nbeta)))
        held = pilots.get((gamma, eps))
        if held is not None and held[1].num_burnin >= run.num_burnin and held[1].num_draws >= run.num_draws:
            records, pilot_run, seconds = held          # its chains are cfg's: same count and seeds
            if progress is not None:
                progress(run.num_chains * run.num_steps, run.num_chains * run.num_steps)
            res = summarize(records, pilot_run, seconds)
            res.notes["gamma_pilot_reused"] = (f"the picked gamma's pilot ({pilot_run.num_draws} draws after "
                                               f"{pilot_run.num_burnin} burn-in per chain, the same seed and step) "
                                               f"is the run: it holds the {run.num_draws}-draw run's chains and more")
            return res
        return at_epsilon(run)

    def scanned() -> LLCResult:
        cal = gamma_scan(pilot_c)
        if cfg.epsilon == AUTO and not any(p.usable for p in cal.points):
            cal = _step_up(cal, gamma_scan)
        c = cal.epsilon * nbeta * scale
        res = _with_gamma_calibration(at_gamma(cal.gamma, cal.epsilon), cal)
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

    if cfg.gamma_hint is None:
        return scanned()
    # A carried gamma (and, with epsilon="auto", a carried step or the pilots' one) is kept when this
    # run's own traces pass; the distance is not tracked in a full run, so the loss traces judge.
    hint_eps = pilot_eps if cfg.epsilon != AUTO or cfg.epsilon_hint is None else float(cfg.epsilon_hint)
    res = at_gamma(float(cfg.gamma_hint), hint_eps)
    kept = carried_gamma(GammaPilot(gamma=float(cfg.gamma_hint), stats=_pilot_stats(res),
                                    llc_per_chain=tuple(res.llc_per_chain), dist_ratio=1.0),
                         nbeta=nbeta, epsilon=hint_eps)
    if kept is None:
        return scanned()
    res = _with_gamma_calibration(res, kept)
    if cfg.epsilon == AUTO:
        eps_kept = carried(_pilot_stats(res), nbeta=nbeta, scale=scale)
        if eps_kept is not None:
            eps_kept.num_burnin = _burnin_of(res)
            res = _with_calibration(res, eps_kept)
    return res


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


def _refuse_sum_loss(seq: SequentialStepper, source: BatchSource, params: dict[str, torch.Tensor],
                     probe_loss: torch.Tensor, batch_size: int) -> None:
    """A loss over B items that equals the sum of its halves' losses is a sum, not a mean: refuse it.

    lambda_hat = nbeta (L(w) - L(w*)) assumes the mean loss per item; a summed loss scales it
    by the batch size (lambda_hat = 12,727 where ~9 is right in the audit)."""
    if batch_size < 2:
        return
    half = batch_size // 2
    a = float(seq._call(params, source.gather(torch.arange(half))))
    b = float(seq._call(params, source.gather(torch.arange(half, 2 * half))))
    whole = float(seq._call(params, source.gather(torch.arange(2 * half)))) if 2 * half != batch_size else float(probe_loss)
    as_sum, as_mean = abs(whole - (a + b)), abs(whole - (a + b) / 2)
    if as_sum < 0.1 * as_mean:
        raise ValueError(f"loss_fn returns a sum over the batch (the loss of {2 * half} items, {whole:.6g}, equals "
                         f"the sum of its halves' losses, {a + b:.6g}), but lambda_hat needs the mean loss per item: "
                         "divide by the number of items (e.g. reduction='mean').")


def _precondition_scale(cfg: SGLDConfig, seq: SequentialStepper, probe: Any, flat0: torch.Tensor) -> float:
    """s in the calibration grid: 1 for SGLD; for rmsprop_sgld the median preconditioner at w*."""
    if cfg.method == "sgld":
        return 1.0
    _, grad = seq.loss_and_grad(flat0.unsqueeze(0), probe)
    precond = 1.0 / (grad.double().abs() + 1e-8)
    return float(precond.median())


def _pilot_stats(res: LLCResult) -> PilotStats:
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


def _loss_wstar(cfg: SGLDConfig, paired: Any, baseline_const: float | None) -> tuple[float, str]:
    """L_n(w*) when known exactly (item table, full baseline), with where it came from."""
    if paired is not None and hasattr(paired, "losses"):
        return float(paired.losses.mean()), "exact: mean of the per-item losses at w*"
    if cfg.baseline == "full" and baseline_const is not None:
        return float(baseline_const), "exact: the full-data baseline"
    return float("nan"), "estimate: mean of the draws' minibatch losses at w*"


def _memory_plan(cfg: SGLDConfig, seq: SequentialStepper, source: BatchSource, flat0: torch.Tensor,
                 star: dict[str, torch.Tensor], dev: torch.device, *, in_place: bool,
                 count_flops: bool, sampled: list[torch.Tensor], ckpt: Checkpointing | None = None,
                 can_checkpoint: bool = False) -> tuple[MemoryPlan, float | None]:
    """Fit the chains into cfg.memory_bytes (weights included) or the memory free now (plus the
    weights, already resident): activations measured on a one-item forward+backward, which also
    counts one chain-step's FLOPs when asked (torch's counter, scaled to the batch: a transformer's
    FLOPs are linear in it; None if it cannot count). With activation checkpointing, see
    _checkpointed_activations."""
    from torch.utils.flop_counter import FlopCounterMode

    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in star.values()}
    weights = sum(storages.values())
    one = source.gather(torch.arange(1))
    counter = FlopCounterMode(display=False) if count_flops else None

    def probe() -> Any:
        if counter is None:
            return seq.loss_and_grad(flat0.unsqueeze(0), one)
        with counter:
            return seq.loss_and_grad(flat0.unsqueeze(0), one)

    try:
        acts, largest = measure_activations(probe, exclude=[flat0, *star.values()])
    except RuntimeError:
        if counter is None:
            raise
        counter = None
        acts, largest = measure_activations(probe, exclude=[flat0, *star.values()])
    flops = float(counter.get_total_flops()) * cfg.batch_size if counter is not None else None
    if ckpt is not None:
        acts, largest = _checkpointed_activations(seq, one, flat0, star, ckpt, outside=(acts, largest))
    est = MemoryEstimate(weights=weights, sampled=flat0.numel() * flat0.element_size(),
                         activations_per_item=acts, largest_per_item=largest, in_place=in_place,
                         largest_param=max(t.numel() * t.element_size() for t in sampled),
                         chunked_noise=dev.type == "cpu" and cfg.method == "sgld" and not cfg.mala,
                         compiled=cfg.compile is True)
    budget = cfg.memory_bytes if cfg.memory_bytes is not None else free_memory(dev) + weights
    return plan_memory(est, num_chains=cfg.num_chains, batch_size=cfg.batch_size, budget=budget,
                       vectorize=False if ckpt is not None else cfg.vectorize,
                       suggest_checkpointing=can_checkpoint and ckpt is None), flops


def _checkpointed_activations(seq: SequentialStepper, one: Any, flat0: torch.Tensor, star: dict[str, torch.Tensor],
                              ckpt: Checkpointing, *, outside: tuple[int, int]) -> tuple[int, int]:
    """(total, largest) activation bytes per item of a checkpointed chain-step.

    The probe's saved-tensor hooks see only what is saved outside the checkpointed layers
    (`outside`: a checkpoint's own hooks take the inside); each layer also keeps its inputs
    (recorded here by forward pre-hooks), and the backward holds one layer's recompute at a time:
    (the unchecked probe's total - outside) / layers. The checkpointed loss must equal the plain
    one: a layer that used its own training flag for more than checkpointing would differ."""
    skip = {t.untyped_storage().data_ptr() for t in [flat0, *star.values()]}
    inputs: dict[int, int] = {}

    def record(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        for t in [*args, *kwargs.values()]:
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in skip:
                inputs[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()

    losses: list[float] = []

    def probe() -> Any:
        loss, grad = seq.loss_and_grad(flat0.unsqueeze(0), one)
        losses.append(float(loss[0]))
        return loss, grad

    handles = [m.register_forward_pre_hook(record, with_kwargs=True) for m in ckpt.layers]
    try:
        probe()
    finally:
        for h in handles:
            h.remove()
    with ckpt.paused():
        full, largest_full = measure_activations(probe, exclude=[flat0, *star.values()])
    with torch.no_grad():
        plain = float(seq._call(seq.layout.split(flat0), one))
    if not all(math.isclose(x, plain, rel_tol=1e-5, abs_tol=1e-6) for x in losses):
        raise ValueError(f"With activation checkpointing the loss at w* is {losses[0]:.8g}, without it {plain:.8g}: "
                         "the model's layers use their training mode for more than checkpointing (dropout?); "
                         "set activation_checkpointing=False.")
    recompute = max(0, full - outside[0]) // len(ckpt.layers)
    return outside[0] + sum(inputs.values()) + recompute, max(outside[1], min(largest_full, recompute))


def _layout(chosen: list[tuple[str, torch.Tensor, torch.Tensor | None]], star: dict[str, torch.Tensor],
            dev: torch.device) -> ParamLayout:
    """Flat layout of the sampled entries: only they get chain copies, w* copies and gradients.

    The master vector is fp32 (fp64 if any sampled parameter is) whatever the model's dtype:
    a bf16/fp16 model computes in its own dtype on the rounded values of the fp32 chain state."""
    names = tuple(f"model.{k}" for k, _, _ in chosen)
    index = tuple(None if m is None else m.reshape(-1).nonzero().squeeze(1).to(dev) for _, _, m in chosen)
    return ParamLayout(names=names, shapes=tuple(p.shape for _, p, _ in chosen),
                       sizes=tuple(p.numel() if i is None else i.numel() for (_, p, _), i in zip(chosen, index, strict=True)),
                       dtypes=tuple(p.dtype for _, p, _ in chosen), dtype=_master_dtype([p.dtype for _, p, _ in chosen]),
                       index=index, base=tuple(None if i is None else star[k].reshape(-1)
                                               for k, i in zip(names, index, strict=True)))


def _want_compile(cfg: SGLDConfig, dev: torch.device, flops: float | None) -> tuple[bool, str | None]:
    """cfg.compile, or for None: compile long CPU jobs (see _AUTO_COMPILE_FLOPS)."""
    if cfg.compile is not None:
        return bool(cfg.compile), None
    if cfg.activation_checkpointing:
        return False, None
    if dev.type != "cpu" or flops is None:
        return False, None
    work = flops * cfg.num_chains * cfg.num_steps
    if work < _AUTO_COMPILE_FLOPS:
        return False, None
    return True, f"auto: {work / 1e12:.1f} TFLOP of SGLD steps on CPU"


def _choose_stepper(cfg: SGLDConfig, common: dict[str, Any], seq: SequentialStepper, source: BatchSource,
                    flat0: torch.Tensor, probe_loss: torch.Tensor, dev: torch.device,
                    flops: float | None, plan: MemoryPlan) -> tuple[Any, str | None]:
    if cfg.vectorize is False or cfg.num_chains == 1:
        return seq, None
    if cfg.activation_checkpointing:
        return seq, "activation checkpointing: chains run one at a time"
    if cfg.vectorize is None and plan.chains_per_group == 1:
        return seq, f"memory plan: {plan.describe()}"
    if cfg.vectorize is None and flops is not None:
        if flops > _CPU_SEQUENTIAL_FLOPS:
            return seq, f"compute-bound on CPU ({flops / 1e6:.0f} MFLOP per chain-step): sequential chains are faster there"
    vec = VectorizedStepper(**common)
    try:
        # Trace once on a probe batch (the same batch for every chain): vmap must work and
        # agree with the plain forward, else chains run one by one.
        probe = source.gather(torch.arange(cfg.batch_size).expand(cfg.num_chains, -1))
        loss, grad = vec.loss_and_grad(flat0.unsqueeze(0).repeat(cfg.num_chains, 1), probe)
        tol = 1e-4
        if not torch.allclose(loss, probe_loss.expand_as(loss), rtol=tol, atol=tol):
            raise RuntimeError(f"vmapped loss {loss.tolist()} disagrees with the plain loss {probe_loss.item()}")
        if cfg.baseline == "paired":
            idx = torch.arange(cfg.batch_size).expand(cfg.num_chains, -1)
            base = vec.star_losses(source, idx, chunk=cfg.num_chains)
            if not torch.allclose(base, probe_loss.expand_as(base), rtol=tol, atol=tol):
                raise RuntimeError(f"vmapped baseline {base.tolist()} disagrees with the plain loss {probe_loss.item()}")
            del base
        del loss, grad
    except Exception as exc:  # noqa: BLE001 - any failure to trace means "use the sequential path"
        if cfg.vectorize:
            raise
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        return seq, f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
    return vec, None


def _summarize(rec: ChainRecords, *, cfg: SGLDConfig, nbeta: float, n: int, baseline_const: float | None,
               path: str, fallback_reason: str | None, sampling_s: float, wall_s: float, cpu_s: float, num_sampled: int,
               device: str, stepper: Any, baseline_method: str, compile_note: str | None,
               loss_wstar: tuple[float, str], plan: MemoryPlan) -> LLCResult:
    base = rec.baseline if baseline_const is None else np.full_like(rec.loss, baseline_const)
    ok = ~rec.diverged
    per_chain = np.full(cfg.num_chains, np.nan)
    if ok.any():
        per_chain[ok] = nbeta * (rec.loss[ok] - base[ok]).mean(axis=1)
    valid = per_chain[ok]
    llc_mean = float(valid.mean()) if valid.size else float("nan")
    llc_std = float(valid.std(ddof=1)) if valid.size >= 2 else float("nan")
    good_loss = rec.loss[ok]
    good_base = base[ok]
    mala = [a for c in np.flatnonzero(ok) for a in rec.mala_accept[c]]
    # On L_m(w_t) - baseline_t: the quantity averaged into lambda_hat (for a constant baseline
    # this equals the loss trace's diagnostics; for "paired" it drops batch noise).
    delta = good_loss - good_base
    dropped = int(rec.diverged.sum())
    diagnostics: dict[str, Any] = {
        "r_hat": max(r_hat_bulk(delta), r_hat_tail(delta)),
        "r_hat_bulk": r_hat_bulk(delta),
        "r_hat_tail": r_hat_tail(delta),
        "ess": ess_bulk(delta),
        "ess_bulk": ess_bulk(delta),
        "ess_tail": ess_tail(delta),
        "drift_z": drift_z(delta),
        "diverged": dropped > 0,
        "num_diverged": dropped,
        "chains_dropped": dropped,
        "partially_diverged": 0 < dropped < cfg.num_chains,
        "epsilon": float(cfg.epsilon),
        "gamma": float(cfg.gamma),
        "num_burnin": int(cfg.num_burnin),
        "chain_steps": int(rec.chain_steps),
        "frac_draws_below_init": float((good_loss < good_base).mean()) if good_loss.size else float("nan"),
        "mala_acceptance": float(np.mean(mala)) if mala else None,
        "steps_per_second": rec.chain_steps / sampling_s if sampling_s > 0 else float("nan"),
        "sampling_time_s": sampling_s,
        "wall_time_s": wall_s,
        "cpu_time_s": cpu_s,         # this process's CPU seconds (all threads): less sensitive to a busy machine
        "vectorized": path == "vectorized",
        "num_sampled_params": int(num_sampled),
        "compiled": bool(stepper.compiled),
        "compile_time_s": float(stepper.compile_s),
        "baseline_item_table": baseline_method == "item_table",
        "memory_estimate_bytes": int(plan.peak_bytes),
        "memory_budget_bytes": int(plan.budget_bytes),
        "memory_activations_per_item": int(plan.estimate.activations_per_item),   # the probe's, per chain
        "chains_per_group": plan.chains_per_group if path == "vectorized" else 1,
        "micro_batches": plan.micro_batches,
        "in_place_chain": isinstance(stepper, InPlaceStepper),
        "activation_checkpointing": bool(cfg.activation_checkpointing),
    }
    notes = {"baseline": baseline_method}
    if 0 < dropped < cfg.num_chains:
        notes["divergence"] = (f"{dropped} of {cfg.num_chains} chains diverged and were dropped: llc_mean is over "
                               "the survivors, which may be biased by that selection")
    if stepper.compile_error:
        notes["compile"] = stepper.compile_error
    elif compile_note and (stepper.compiled or compile_note.startswith("not compiled")):
        notes["compile"] = compile_note
    baseline_loss = float(np.nanmean(good_base)) if baseline_const is None and good_base.size else (
        baseline_const if baseline_const is not None else float("nan"))
    wstar, wstar_note = loss_wstar
    if not math.isfinite(wstar):
        wstar = baseline_loss
    notes["loss_wstar"] = wstar_note
    return LLCResult(
        llc_mean=llc_mean, llc_std=llc_std, llc_per_chain=per_chain.tolist(),
        init_loss=float(np.nanmean(rec.init_loss)), baseline_loss=float(baseline_loss), nbeta=nbeta, n=n,
        loss_trace=rec.loss, baseline_trace=base, diverged=bool(rec.diverged.any()),
        chain_diverged=rec.diverged.tolist(), diagnostics=diagnostics, path=path,
        fallback_reason=fallback_reason, device=device, notes=notes, loss_wstar=float(wstar),
    )
