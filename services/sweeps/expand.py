"""Grid expansion: checkpoints × sampler grid (cartesian product) × seeds → job specs + keys.

Pure: reads nothing and writes nothing, so a plan can be shown or tested before submission.
"""
from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

from services.store.entities import CheckpointLike, PlannedJob
from services.store.jobkey import JobKeys
from services.core.endpoints import under_storage
from services.sweeps.schema import LLCConfig, SamplerGrid

GRID_FIELDS: tuple[str, ...] = ("epsilon", "gamma", "nbeta", "num_chains", "num_draws", "num_burnin", "batch_size")


def sampler_points(grid: SamplerGrid) -> list[dict[str, Any]]:
    """Every combination of the grid's lists, in a stable order (ε varies slowest)."""
    lists = [list(getattr(grid, name)) for name in GRID_FIELDS]
    points = []
    for values in itertools.product(*lists):
        point = dict(zip(GRID_FIELDS, values, strict=True))
        point["steps_between_draws"] = grid.steps_between_draws
        point["baseline"] = grid.baseline
        if grid.method != "sgld":                 # only when set: keeps plain-SGLD settings' keys as they were
            point["method"] = grid.method
        points.append(point)
    return points


def expand_sweep(cfg: LLCConfig, checkpoints: Sequence[CheckpointLike], *, storage_uri: str,
                 estimator_version: str, model_config: Mapping[str, Any] | None = None,
                 dataset_fingerprint: str | None = None) -> list[PlannedJob]:
    """One job per checkpoint × sampler point × component × seed, each with its job key and JobSpec JSON.

    Each sampler point, component and the shared parts are validated (as JobSpec dataclasses) and
    serialized once; per job only the checkpoint and seed change, so 100,000 jobs take well under a
    second. model_config: the checkpoints' config.json, needed when sweep.components has `heads`.
    dataset_fingerprint: the dataset as submitted (in the spec, not the key)."""
    from workers.job import DatasetSpec, JobSpec, SamplerSpec

    sweep = cfg.sweep
    dataset = DatasetSpec(uri=under_storage(sweep.dataset.uri, storage_uri), max_sequences=sweep.dataset.max_sequences)
    sample_params = tuple(sweep.sample_params) if sweep.sample_params else None
    num_threads = max(1, int(sweep.resources.num_cpus))
    # (component or None, what the job samples); None keeps pre-component job keys unchanged.
    restrictions: list[tuple[str | None, tuple[str, ...] | None]] = [(None, sample_params)]
    if sweep.components:
        restrictions = [(c, None if c == "all" else (c,)) for c in expand_components(sweep.components, model_config)]
    keys = JobKeys(dataset=asdict(dataset), estimator_version=estimator_version)
    points: list[tuple[dict[str, Any], dict[str, Any], tuple[str, ...] | None, str | None]] = []
    for point in sampler_points(cfg.sampler):
        sampler = SamplerSpec(**point)
        for component, sampled in restrictions:
            hyper = dict(point)
            if component is not None:
                hyper["component"] = component
            elif sampled:
                hyper["sample_params"] = list(sampled)
            if sweep.dtype != "float32":
                hyper["dtype"] = sweep.dtype
            points.append((asdict(sampler), hyper, sampled, component))
    templates: dict[str | None, dict[str, Any]] = {}
    jobs: list[PlannedJob] = []
    for ref in sorted(checkpoints, key=lambda r: r.step):
        for sampler_json, hyper, sampled, component in points:
            for seed in sweep.seeds:
                template = templates.get(component)
                if template is None:  # the first job of a component goes through JobSpec: the rest share its shape
                    template = templates[component] = spec_to_dict(JobSpec(
                        checkpoint_uri=ref.uri, fingerprint=ref.fingerprint, step=ref.step, dataset=dataset,
                        sampler=SamplerSpec(**sampler_json), seed=int(seed), device=sweep.device,
                        num_threads=num_threads, sample_params=sampled, compile=sweep.compile, dtype=sweep.dtype,
                        activation_checkpointing=bool(sweep.activation_checkpointing),
                        dataset_fingerprint=dataset_fingerprint))
                spec = {**template, "checkpoint_uri": ref.uri, "fingerprint": ref.fingerprint, "step": ref.step,
                        "sampler": sampler_json, "seed": int(seed)}
                key = keys.key(checkpoint_uri=ref.uri, fingerprint=ref.fingerprint, sampler=hyper, seed=int(seed))
                jobs.append(PlannedJob(checkpoint=ref, key=key, hyperparameters=hyper, seed=int(seed), spec=spec))
    return jobs


def expand_components(components: Sequence[str], model_config: Mapping[str, Any] | None) -> list[str]:
    """sweep.components with `heads` expanded to every l{L}h{H} of the architecture.

    With the checkpoints' config.json, every named component is checked against the architecture
    (a head, layer or MLP it lacks is refused here, not by each of the sweep's jobs)."""
    from workers.llc.components import check_selector, expand_selectors

    if "heads" in components and model_config is None:
        raise ValueError("sweep.components has `heads` but the checkpoints' config.json was not read; "
                         "plan the sweep through plan_sweep (it reads it) or list heads such as l0h1.")
    try:
        expanded = expand_selectors(list(components), model_config or {})
        if model_config is not None:
            for c in expanded:
                check_selector(c, dict(model_config))
        return expanded
    except ValueError as exc:
        raise ValueError(f"sweep.components: {exc}") from exc


def components_need_config(components: Sequence[str] | None) -> bool:
    """Whether sweep.components names anything (a head, layer, MLP) to check against config.json."""
    from workers.llc.components import is_component_selector

    return any(c != "all" and is_component_selector(c) for c in components or ())


def spec_to_dict(spec: Any) -> dict[str, Any]:
    d = asdict(spec)
    if d.get("sample_params") is not None:
        d["sample_params"] = list(d["sample_params"])
    return d


def spec_from_dict(d: dict[str, Any]) -> Any:
    """Rebuild a workers.job.JobSpec from its stored JSON."""
    from workers.job import DatasetSpec, JobSpec, SamplerSpec

    d = dict(d)
    d["dataset"] = DatasetSpec(**d["dataset"])
    d["sampler"] = SamplerSpec(**d["sampler"])
    if d.get("sample_params") is not None:
        d["sample_params"] = tuple(d["sample_params"])
    return JobSpec(**d)
