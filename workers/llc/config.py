"""The sampler's hyperparameters, validated once so a bad value fails before any work."""
from __future__ import annotations

import math
from dataclasses import dataclass

from .sgld import METHODS

BASELINES = ("paired", "full")
AUTO = "auto"


@dataclass(frozen=True)
class SGLDConfig:
    """Hyperparameters of one LLC estimate (see workers/llc/__init__.py for the method).

    baseline: "paired" subtracts L_m(w*) on the same minibatch at every draw (lowest
    variance); "full" subtracts L_n(w*) over the whole dataset; an int K subtracts the mean
    of L_m(w*) over K seeded minibatches.
    sample_params: component selectors ("l1h2", "l0.mlp", "embed", a list = union; see
    components.py) or fnmatch patterns of parameter names; only those entries are sampled (chain
    copies, w* and gradients exist for them alone), every other entry stays bit-identical at w*.
    vectorize: None picks the vmapped all-chains path when it fits and traces, else runs
    chains one after another; True/False force a path.
    divergence_ratio: a chain diverges when its loss is non-finite or exceeds
    L_m(w*) + divergence_ratio * (|L_m(w*)| + 1).
    compile: run each step's loss and gradient as a torch.compile'd graph (fused kernels; pays
    a one-off compile, 10-15 s for a small transformer on CPU, cached on disk by torch for
    later processes); falls back to eager when the model cannot be compiled. None: compile
    CPU jobs with at least 1 TFLOP of SGLD steps (estimator._AUTO_COMPILE_FLOPS), never on GPU.
    mala: also estimate the Metropolis (MALA) acceptance rate of the SGLD proposals
    (one extra forward+backward per draw; plain SGLD only).
    epsilon: a step size, or "auto": a short pilot picks it (calibration.py; the record is in
    LLCResult.calibration). epsilon_hint: with "auto", a step picked earlier (e.g. on another
    checkpoint of the same sweep) that is tried first and kept when its traces still pass.
    gamma: the localization strength, or "auto": pilots down a grid of gamma/nbeta pick the weakest
    one at which lambda_hat has stopped rising and the chains stay localized (localization.py; the
    record is in LLCResult.gamma_calibration). gamma_hint: with "auto", a gamma picked earlier, kept
    when this run's traces pass and its chains stay localized. gamma_pilot_steps: the most steps per
    chain one gamma pilot may take (a weaker gamma needs a longer burn-in; the scan ends before it).
    method: "sgld" or "rmsprop_sgld" (diagonal RMSProp preconditioning, see sgld.py).
    memory_bytes: what the estimate may use on its device, weights included (a worker's share);
    None: what is free there now. The memory plan (memory.py) fits the chains into it or refuses.
    activation_checkpointing: recompute each decoder layer's activations in the backward instead of
    keeping them (checkpointing.py; Hugging Face models that support it): less activation memory for
    about one more forward per step; chains then run one at a time, eagerly.
    """

    epsilon: float | str = 1e-4
    gamma: float | str = 100.0
    nbeta: float | None = None
    num_chains: int = 4
    num_draws: int = 200
    num_burnin: int = 100
    steps_between_draws: int = 1
    batch_size: int = 256
    seed: int = 0
    baseline: str | int = "paired"
    sample_params: tuple[str, ...] | None = None
    vectorize: bool | None = None
    divergence_ratio: float = 100.0
    mala: bool = False
    compile: bool | None = None
    method: str = "sgld"
    rmsprop_alpha: float = 0.99
    epsilon_hint: float | None = None
    gamma_hint: float | None = None
    gamma_pilot_steps: int = 30_000
    memory_bytes: int | None = None
    activation_checkpointing: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.sample_params, str):
            object.__setattr__(self, "sample_params", (self.sample_params,))
        elif self.sample_params is not None:
            object.__setattr__(self, "sample_params", tuple(self.sample_params))
        if self.epsilon != AUTO:
            _positive_float("epsilon", self.epsilon, "the SGLD step size must be > 0 (e.g. 1e-4) or 'auto'")
        if self.epsilon_hint is not None:
            _positive_float("epsilon_hint", self.epsilon_hint, "use a step size > 0 picked by an earlier calibration, or None")
        if self.method not in METHODS:
            raise ValueError(f"SGLDConfig.method={self.method!r} is invalid: use one of {', '.join(METHODS)}.")
        if not (isinstance(self.rmsprop_alpha, (int, float)) and 0 < self.rmsprop_alpha < 1):
            raise ValueError(f"SGLDConfig.rmsprop_alpha={self.rmsprop_alpha!r} is invalid: the RMSProp decay must lie in (0, 1), e.g. 0.99.")
        if self.mala and self.method != "sgld":
            raise ValueError("SGLDConfig.mala=True needs method='sgld': the MALA acceptance is defined for the plain SGLD proposal only.")
        if self.gamma != AUTO and (isinstance(self.gamma, bool) or not isinstance(self.gamma, (int, float))
                                   or not (math.isfinite(self.gamma) and self.gamma >= 0)):
            raise ValueError(f"SGLDConfig.gamma={self.gamma!r} is invalid: the localization strength must be a finite number >= 0 or 'auto'.")
        if self.gamma_hint is not None:
            _positive_float("gamma_hint", self.gamma_hint, "use a localization strength > 0 picked by an earlier calibration, or None")
        if self.nbeta is not None:
            _positive_float("nbeta", self.nbeta, "use a positive inverse temperature or None for n/log n")
        for name, low in (("num_chains", 1), ("num_draws", 1), ("num_burnin", 0), ("gamma_pilot_steps", 1),
                          ("steps_between_draws", 1), ("batch_size", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"SGLDConfig.{name}={value!r} is invalid: it must be an integer >= {low}.")
        if isinstance(self.baseline, bool) or not (
            self.baseline in BASELINES or (isinstance(self.baseline, int) and self.baseline >= 1)
        ):
            raise ValueError(
                f"SGLDConfig.baseline={self.baseline!r} is invalid: use 'paired', 'full' or a positive int K (batches)."
            )
        _positive_float("divergence_ratio", self.divergence_ratio, "use e.g. 100")
        if self.memory_bytes is not None and (isinstance(self.memory_bytes, bool) or not isinstance(self.memory_bytes, int)
                                              or self.memory_bytes <= 0):
            raise ValueError(f"SGLDConfig.memory_bytes={self.memory_bytes!r} is invalid: use a positive number of bytes or None.")

        if not isinstance(self.activation_checkpointing, bool):
            raise ValueError(f"SGLDConfig.activation_checkpointing={self.activation_checkpointing!r} is invalid: use True or False.")
        if self.activation_checkpointing and (self.vectorize or self.compile):
            knob = "vectorize=True" if self.vectorize else "compile=True"
            raise ValueError(f"SGLDConfig.activation_checkpointing=True cannot combine with {knob}: checkpointed "
                             f"chains run one at a time, eagerly; set {knob.split('=')[0]}=None or False.")

    @property
    def num_steps(self) -> int:
        """SGLD steps per chain: burn-in, then one draw every steps_between_draws."""
        return self.num_burnin + (self.num_draws - 1) * self.steps_between_draws + 1


def _positive_float(name: str, value: float, fix: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"SGLDConfig.{name}={value!r} is invalid: {fix}.")
