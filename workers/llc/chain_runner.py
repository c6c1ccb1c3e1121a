"""ChainRunner: one estimate's chains at a numeric epsilon and gamma, and their LLCResult.

estimate_llc (estimator.py) builds it once, after choosing the stepper, memory plan and baseline;
every run of that call goes through it (the run itself and the epsilon and gamma pilots,
calibrated_run.py), so pilots and run sample the same way.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .accumulate import AccumulatingStepper
from .chains import ChainRecords, run_group
from .config import SGLDConfig
from .data import BatchSource, IndexStream, chain_generator
from .memory import MemoryPlan
from .result import LLCResult
from .sgld import SGLDStep
from .steppers import InPlaceStepper
from .summary import summarize


@dataclass(frozen=True, kw_only=True)
class ChainRunner:
    """What every run of one estimate shares; the summary-only facts are reported as chosen at setup."""

    stepper: Any                        # VectorizedStepper, SequentialStepper or InPlaceStepper
    source: BatchSource
    flat0: torch.Tensor                 # w*, the sampled entries flattened
    plan: MemoryPlan
    nbeta: float
    n: int
    device: torch.device
    paired: Any | None                  # baseline="paired": the per-item loss table or a stepper
    baseline_const: float | None
    baseline_method: str
    fallback_reason: str | None
    compile_note: str | None
    loss_wstar: tuple[float, str]
    num_sampled: int
    started: float                      # perf_counter and process_time when estimate_llc began
    cpu_started: float

    def sample(self, run_cfg: SGLDConfig, report: Callable[[int], None] | None,
               track_distance: bool = False) -> tuple[ChainRecords, float]:
        """Run run_cfg's chains at its (numeric) epsilon and gamma; the records and the sampling seconds."""
        step = SGLDStep(epsilon=float(run_cfg.epsilon), gamma=float(run_cfg.gamma), nbeta=self.nbeta,
                        method=run_cfg.method, rmsprop_alpha=run_cfg.rmsprop_alpha)
        records = ChainRecords(run_cfg.num_chains, run_cfg.num_draws)
        streams = [IndexStream(self.n, run_cfg.batch_size, chain_generator(run_cfg.seed, c, 0))
                   for c in range(run_cfg.num_chains)]
        noise = [chain_generator(run_cfg.seed, c, 1, self.device) for c in range(run_cfg.num_chains)]
        t0 = time.perf_counter()
        size = self.plan.chains_per_group if self.stepper.path == "vectorized" else 1
        groups = [list(range(c, min(c + size, run_cfg.num_chains))) for c in range(0, run_cfg.num_chains, size)]
        # The in-place chain accumulates micro-batches into its own gradient buffer.
        accumulate = self.plan.micro_batches > 1 and not isinstance(self.stepper, InPlaceStepper)
        steps_by = AccumulatingStepper(self.stepper, self.plan.micro_batches) if accumulate else self.stepper
        for g in groups:
            run_group(stepper=steps_by, source=self.source, chains=g, streams=[streams[c] for c in g],
                      noise_gens=[noise[c] for c in g], flat0=self.flat0, cfg=run_cfg, step=step, paired=self.paired,
                      records=records, progress=report or (lambda k: None), track_distance=track_distance)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return records, time.perf_counter() - t0

    def summarize(self, records: ChainRecords, run_cfg: SGLDConfig, sampling_s: float) -> LLCResult:
        """The LLCResult of records sampled at run_cfg (summary.py)."""
        return summarize(records, cfg=run_cfg, nbeta=self.nbeta, n=self.n, baseline_const=self.baseline_const,
                         path=self.stepper.path, fallback_reason=self.fallback_reason, sampling_s=sampling_s,
                         wall_s=time.perf_counter() - self.started, cpu_s=time.process_time() - self.cpu_started,
                         num_sampled=self.num_sampled, device=str(self.device), stepper=self.stepper,
                         baseline_method=self.baseline_method, compile_note=self.compile_note,
                         loss_wstar=self.loss_wstar, plan=self.plan)
