"""estimate_llc: validate inputs, pick the chain path and memory plan, then hand the runs over.

The setup here ends in a ChainRunner (chain_runner.py: sample chains, summarize them with
summary.py); CalibratedRun (calibrated_run.py) drives epsilon="auto" / gamma="auto" through it.
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

import torch
from torch import nn
from torch.utils.data import Dataset

from .baselines import constant_baseline, item_loss_table
from .calibrated_run import CalibratedRun, precondition_scale
from .chain_runner import ChainRunner
from .checkpointing import Checkpointing, enable_checkpointing
from .components import resolve_selection
from .config import AUTO, SGLDConfig
from .data import BatchSource
from .memory import MemoryEstimate, MemoryPlan, free_memory, measure_activations, plan_memory
from .result import LLCResult
from .steppers import (InPlaceStepper, LossFn, LossModule, ParamLayout, SequentialStepper, VectorizedStepper,
                       adopt_parameters)
from .summary import known_loss_wstar

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
    runner = ChainRunner(stepper=stepper, source=source, flat0=flat0, plan=plan, nbeta=nbeta, n=n, device=dev,
                         paired=paired, baseline_const=baseline_const, baseline_method=baseline_method,
                         fallback_reason=fallback_reason, compile_note=compile_note,
                         loss_wstar=known_loss_wstar(cfg, paired, baseline_const), num_sampled=layout.numel,
                         started=started, cpu_started=cpu_started)
    scale = precondition_scale(cfg, seq, probe, flat0) if AUTO in (cfg.epsilon, cfg.gamma) else 1.0
    return CalibratedRun(runner=runner, cfg=cfg, scale=scale, progress=progress).result()


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
