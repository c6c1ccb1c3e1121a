"""JSON-safe numbers: Postgres JSON and strict JSON reject NaN/inf, so those become None."""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def finite_or_none(value: Any) -> float | None:
    """`value` as a finite float, else None (None, bools, non-numbers, NaN and inf)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def json_safe(value: Any) -> Any:
    """`value` with non-finite floats replaced by None, numpy/torch scalars and arrays made plain."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (str, bytes, bool, int)) or value is None:
        return value
    item = getattr(value, "item", None)
    if callable(item):
        try:
            return json_safe(item())
        except (ValueError, TypeError):
            pass
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return json_safe(tolist())
    return value


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """Consecutive slices of at most `size` items (parameter limits, MLflow batch limits)."""
    for start in range(0, len(items), size):
        yield items[start:start + size]
