"""Fault classes and the infrastructure retry budget (docs/faults.md).

*Input* faults (the job can never succeed as specified) fail at once. *Infrastructure* faults
(worker or node lost, out of memory, S3 away, disk full) say nothing about the job: it is run
again after an exponential backoff, by the scheduler that holds its claim, within a budget of
its own so they never use up the job's attempts. *Outcome* (diverged) is a result.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any

#: longest wait between two runs of a job hit by infrastructure faults
MAX_BACKOFF_S = 60.0


def is_infrastructure(cause: BaseException) -> bool:
    """An error raised inside the task that is the node's or a service's fault, not the job's."""
    from workers.job import JobInfraError

    return isinstance(cause, (JobInfraError, MemoryError)) or type(cause).__name__ == "OutOfMemoryError"


@dataclass
class _Waiting:
    due: float
    flight: Any


@dataclass
class InfraRetries:
    """Per-job count of infrastructure faults and the jobs waiting out their backoff."""

    budget: int
    base_s: float
    used: dict[int, int] = field(default_factory=dict)
    _waiting: dict[int, _Waiting] = field(default_factory=dict)

    def schedule(self, job_id: int, flight: Any, *, cost: int = 1) -> float | None:
        """Queue the job's next run; its delay, or None once the budget is spent."""
        used = self.used.get(job_id, 0) + cost
        self.used[job_id] = used
        if used > self.budget:
            self.used.pop(job_id, None)
            return None
        delay = min(MAX_BACKOFF_S, self.base_s * 2 ** (used - 1)) * (0.5 + random.random() / 2)
        self._waiting[job_id] = _Waiting(due=time.monotonic() + delay, flight=flight)
        return delay

    def due(self, now: float) -> list[Any]:
        """The flights whose backoff is over (removed from the waiting set)."""
        ready = [job_id for job_id, w in self._waiting.items() if w.due <= now]
        return [self._waiting.pop(job_id).flight for job_id in ready]

    def drop(self, job_id: int) -> Any | None:
        """Forget a waiting job (cancelled or taken over); its flight, if it was waiting."""
        waiting = self._waiting.pop(job_id, None)
        return waiting.flight if waiting is not None else None

    def job_ids(self) -> list[int]:
        return list(self._waiting)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def clear(self) -> None:
        self._waiting.clear()
