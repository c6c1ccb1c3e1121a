"""Wait for a condition, never for a fixed time; fail with what was awaited on timeout."""
from __future__ import annotations

import time
from collections.abc import Callable

import pytest


def wait_for(what: str, cond: Callable[[], bool], timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)
