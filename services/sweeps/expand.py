"""Grid expansion: checkpoints × sampler grid (cartesian product) × seeds → job specs + keys.

Pure: reads nothing and writes nothing, so a plan can be shown or tested before submission.
"""
from __future__ import annotations

import itertools
from collections.abc import Sequence
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
        points.append(point)
    return points


def expand_sweep(cfg: LLCConfig, checkpoints: Sequence[CheckpointLike], *, storage_uri: str,
                 estimator_version: str, dataset_fingerprint: str | None = None) -> list[PlannedJob]:
    """One job per checkpoint × sampler point × seed, each with its job key and JobSpec JSON.

    Each sampler point and the shared parts are validated (as JobSpec dataclasses) and serialized
    once; per job only the checkpoint and seed change, so 100,000 jobs take well under a second."""
    from workers.job import DatasetSpec, JobSpec, SamplerSpec

    sweep = cfg.sweep
    dataset = DatasetSpec(uri=under_storage(sweep.dataset.uri, storage_uri), max_sequences=sweep.dataset.max_sequences)
    sample_params = tuple(sweep.sample_params) if sweep.sample_params else None
    num_threads = max(1, int(sweep.resources.num_cpus))
    keys = JobKeys(dataset=asdict(dataset), estimator_version=estimator_version)
    points = []
    for point in sampler_points(cfg.sampler):
        sampler = SamplerSpec(**point)
        hyper = dict(point)
        if sample_params:
            hyper["sample_params"] = list(sample_params)
        points.append((asdict(sampler), hyper))
    template: dict[str, Any] | None = None
    jobs: list[PlannedJob] = []
    for ref in sorted(checkpoints, key=lambda r: r.step):
        for sampler_json, hyper in points:
            for seed in sweep.seeds:
                if template is None:  # the first job goes through JobSpec: the rest share its shape
                    template = spec_to_dict(JobSpec(
                        checkpoint_uri=ref.uri, fingerprint=ref.fingerprint, step=ref.step, dataset=dataset,
                        sampler=SamplerSpec(**sampler_json), seed=int(seed), device=sweep.device,
                        num_threads=num_threads, sample_params=sample_params, compile=sweep.compile,
                        dataset_fingerprint=dataset_fingerprint))
                spec = {**template, "checkpoint_uri": ref.uri, "fingerprint": ref.fingerprint, "step": ref.step,
                        "sampler": sampler_json, "seed": int(seed)}
                key = keys.key(checkpoint_uri=ref.uri, fingerprint=ref.fingerprint, sampler=hyper, seed=int(seed))
                jobs.append(PlannedJob(checkpoint=ref, key=key, hyperparameters=hyper, seed=int(seed), spec=spec))
    return jobs


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
