"""Checkpoint selection: all, every k-th, a step range, an explicit list."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from services.sweeps.schema import CheckpointSelection
from services.sweeps.selection import SelectionError, select_checkpoints


@dataclass(frozen=True)
class Ref:
    step: int


REFS = [Ref(s) for s in (0, 1, 3, 7, 15, 31, 63, 127)]
RUN = "s3://bucket/run"


def steps(sel: CheckpointSelection) -> list[int]:
    return [r.step for r in select_checkpoints(list(reversed(REFS)), sel, run_uri=RUN)]


def test_all_every_range_and_list() -> None:
    assert steps(CheckpointSelection()) == [0, 1, 3, 7, 15, 31, 63, 127]
    assert steps(CheckpointSelection(every=3)) == [0, 7, 63, 127]        # the last checkpoint is always kept
    assert steps(CheckpointSelection(every=7)) == [0, 127]
    assert steps(CheckpointSelection(start=3, stop=63)) == [3, 7, 15, 31, 63]
    assert steps(CheckpointSelection(start=3, stop=63, every=2)) == [3, 15, 63]
    assert steps(CheckpointSelection(steps=[127, 0, 7])) == [0, 7, 127]


def test_empty_range_names_the_run_and_the_available_steps() -> None:
    with pytest.raises(SelectionError, match=r"No checkpoint under s3://bucket/run matches the selection \(steps 200..300\)"):
        steps(CheckpointSelection(start=200, stop=300))


def test_listed_step_without_checkpoint_is_refused() -> None:
    with pytest.raises(SelectionError, match=r"Step\(s\) \[5\] of sweep.checkpoints.steps have no checkpoint under s3://bucket/run"):
        steps(CheckpointSelection(steps=[3, 5]))
