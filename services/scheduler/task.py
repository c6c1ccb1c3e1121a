"""The Ray task: a JobSpec (URIs + small specs) in, a JSON-safe JobResult dict out.

Lives on the services side so workers/ never imports services/; the body is workers.job.run_job.
"""
from __future__ import annotations

from typing import Any

import ray


def execute_job(spec: Any) -> dict[str, Any]:
    """Run one estimate; a diverged estimate comes back as a result, errors propagate."""
    from workers.job import run_job  # run_job pins torch threads to spec.num_threads itself

    return run_job(spec).to_dict()


remote_execute_job = ray.remote(execute_job)
