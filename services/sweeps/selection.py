"""Which discovered checkpoints a sweep uses: all, every k-th, a step range, or a list."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Protocol, TypeVar

import numpy as np

from services.core.errors import UserError
from services.sweeps.schema import AdaptiveDensity, CheckpointSelection


class SelectionError(UserError, ValueError):
    """No checkpoint (or not every listed step) matches the selection."""


class _HasStep(Protocol):
    @property
    def step(self) -> int: ...


R = TypeVar("R", bound=_HasStep)


def describe(sel: CheckpointSelection) -> str:
    if sel.adaptive.enabled:
        a = sel.adaptive
        return (f"adaptive (first {a.initial}, then up to {a.budget} more) within "
                f"{describe(replace(sel, adaptive=AdaptiveDensity()))}")
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
    if sel.adaptive.enabled:
        return log_spaced(chosen, int(sel.adaptive.initial))  # type: ignore[arg-type]
    return chosen


def log_spaced(refs: Sequence[R], count: int) -> list[R]:
    """`count` of `refs` (sorted by step) nearest to evenly spaced points on log(step + 1), both
    ends kept: the adaptive sweep's first pass. Picks depend on the steps only, so a run that
    grows keeps most of its earlier picks (and their finished jobs)."""
    if count >= len(refs):
        return list(refs)
    xs = np.log(np.asarray([r.step for r in refs], dtype=float) + 1.0)
    picked: set[int] = set()
    for target in np.linspace(xs[0], xs[-1], count):
        order = np.argsort(np.abs(xs - target), kind="stable")
        picked.add(int(next(i for i in order if int(i) not in picked)))
    return [refs[i] for i in sorted(picked)]


def _short(steps: list[int]) -> str:
    if len(steps) <= 12:
        return str(steps)
    return f"[{', '.join(map(str, steps[:5]))}, ..., {', '.join(map(str, steps[-5:]))}] ({len(steps)} in all)"
