"""Which discovered checkpoints a sweep uses: all, every k-th, a step range, or a list."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

from services.core.errors import UserError
from services.sweeps.schema import CheckpointSelection


class SelectionError(UserError, ValueError):
    """No checkpoint (or not every listed step) matches the selection."""


class _HasStep(Protocol):
    @property
    def step(self) -> int: ...


R = TypeVar("R", bound=_HasStep)


def describe(sel: CheckpointSelection) -> str:
    if sel.steps is not None:
        return f"steps {list(sel.steps)}"
    parts = []
    if sel.start is not None or sel.stop is not None:
        parts.append(f"steps {sel.start if sel.start is not None else 'first'}..{sel.stop if sel.stop is not None else 'last'}")
    if sel.every > 1:
        parts.append(f"every {sel.every}th checkpoint and the last")
    return ", ".join(parts) or "all checkpoints"


def select_checkpoints(refs: Sequence[R], sel: CheckpointSelection, *, run_uri: str) -> list[R]:
    """Refs sorted by step; `every` counts within the range and keeps both ends of it, so a
    thinned curve still spans the whole run (and a nightly sweep always reaches the newest)."""
    ordered = sorted(refs, key=lambda r: r.step)
    available = [r.step for r in ordered]
    if sel.steps is not None:
        wanted = sorted(set(sel.steps))
        missing = [s for s in wanted if s not in set(available)]
        if missing:
            raise SelectionError(
                f"Step(s) {missing} of sweep.checkpoints.steps have no checkpoint under {run_uri} "
                f"(available: {_short(available)}); pick steps from that list.")
        return [r for r in ordered if r.step in set(wanted)]
    in_range = [r for r in ordered
                if (sel.start is None or r.step >= sel.start) and (sel.stop is None or r.step <= sel.stop)]
    chosen = in_range[:: max(1, sel.every)]
    if chosen and chosen[-1] is not in_range[-1]:
        chosen.append(in_range[-1])
    if not chosen:
        raise SelectionError(
            f"No checkpoint under {run_uri} matches the selection ({describe(sel)}); available steps are "
            f"{_short(available)}, so widen sweep.checkpoints.start/stop.")
    return chosen


def _short(steps: list[int]) -> str:
    if len(steps) <= 12:
        return str(steps)
    return f"[{', '.join(map(str, steps[:5]))}, ..., {', '.join(map(str, steps[-5:]))}] ({len(steps)} in all)"
