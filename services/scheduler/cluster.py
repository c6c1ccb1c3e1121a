"""Connecting the driver to Ray: an existing cluster (RAY_ADDRESS) or a local one it starts."""
from __future__ import annotations

import logging
import os

import ray

from services.core.errors import UserError

log = logging.getLogger(__name__)


class ClusterUnavailable(UserError):
    """The Ray cluster cannot be reached."""


def connect(*, address: str | None, num_cpus: int | None = None, num_gpus: int | None = None) -> bool:
    """Connect (or start a local Ray); returns True when this call started Ray and must shut it down."""
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Ray retries a task its memory monitor killed on its own, forever by default, even past
    # max_retries; the owner (this driver) decides, so this bounds it: an OOM kill comes back to
    # the scheduler as OutOfMemoryError, an infrastructure fault within --infra-retries.
    os.environ.setdefault("RAY_task_oom_retries", "0")
    try:
        if address:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
        else:
            ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = address or "a local Ray"
        raise ClusterUnavailable(f"Cannot connect to the Ray cluster at {where} ({exc}); start it or fix RAY_ADDRESS.") from exc
    return True


def has_gpus() -> bool:
    return float(ray.cluster_resources().get("GPU", 0.0)) > 0


def disconnect(started: bool) -> None:
    """Shut down only a Ray this process started (never `ray stop`)."""
    if started and ray.is_initialized():
        ray.shutdown()
