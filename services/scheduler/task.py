"""The Ray task: a JobSpec (URIs + small specs) in, a JSON-safe JobResult dict out.

Lives on the services side so workers/ never imports services/; the body is workers.job.run_job.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import ray


def worker_memory_bytes(assigned: Mapping[str, float], *, gpu_total_bytes: int | None) -> int | None:
    """The memory a job may plan with where it landed: its share of one GPU (num_gpus, at most
    one device), else Ray's `memory` reservation for it; None: what is free when it starts."""
    gpus = float(assigned.get("GPU", 0) or 0)
    if gpus > 0 and gpu_total_bytes:
        return int(gpu_total_bytes * min(gpus, 1.0))
    memory = assigned.get("memory")
    return int(memory) if memory else None


def execute_job(spec: Any, attempt: str | None = None) -> dict[str, Any]:
    """Run one estimate; a diverged estimate comes back as a result, errors propagate.
    `attempt`: the key under which this run notes its Ray node (services/scheduler/placement.py),
    so a retry after an infrastructure fault can go to another node; the result names the node."""
    from services.scheduler.placement import forget, note_node
    from workers.job import run_job  # run_job pins torch threads to spec.num_threads itself

    node = note_node(attempt)
    if spec.memory_bytes is None and ray.is_initialized():
        assigned = ray.get_runtime_context().get_assigned_resources()
        gpu_total = None
        if assigned.get("GPU"):
            import torch

            gpu_total = torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available() else None
        spec = dataclasses.replace(spec, memory_bytes=worker_memory_bytes(assigned, gpu_total_bytes=gpu_total))
    out = run_job(spec).to_dict()
    if attempt:
        forget(attempt)
    out["ray_node_id"] = node
    return out


remote_execute_job = ray.remote(execute_job)
