"""Adaptive sweeps, when their jobs are all done: add the next checkpoints before aggregating.

A refinement that fails (object store away, a bad stored config) is logged and the sweep is
aggregated as it is: the estimates it has are never held back by the ones it could add.
"""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def refine_adaptive(sweep_id: int, *, database_url: str | None) -> bool:
    """True when checkpoints were added and their jobs now wait to run."""
    from services.core.settings import endpoints
    from services.sweeps.adaptive import refine_sweep

    try:
        outcome = refine_sweep(sweep_id, database_url=database_url or endpoints().database_url)
    except Exception as exc:
        log.warning("Adaptive refinement of sweep %s failed (%s); aggregating what it has.", sweep_id,
                    " ".join(str(exc).split())[:300])
        return False
    if outcome.added_steps:
        log.info("sweep %s: adaptive density added steps %s (%d jobs to run, %d reused)", sweep_id,
                 list(outcome.added_steps), outcome.new_jobs, outcome.reused_jobs)
    return outcome.pending
