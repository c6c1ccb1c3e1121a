"""Per-head scores over training (from each checkpoint's metadata.json `heads`) and which heads
moved in a stage: what names the circuit parts behind a λ̂ stage in the stage table."""
from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping

import numpy as np

from workers.head_scores import INDUCTION, PREV_TOKEN, head_sort_key, parse_head_scores

#: step → head ("layer.head") → score name → value
HeadScores = dict[int, dict[str, dict[str, float]]]
SHORT = {PREV_TOKEN: "prev-token", INDUCTION: "induction"}


def read_head_scores(checkpoints: Iterable[tuple[int, str]]) -> HeadScores:
    """`heads` of each (step, checkpoint URI)'s metadata.json; checkpoints without them are left out.
    The first unreadable store stops the reading (a dead endpoint would cost its retries per checkpoint)."""
    from workers.objectstore import ObjectStoreError, open_store

    out: HeadScores = {}
    for step, uri in sorted(set(checkpoints)):
        try:
            doc = json.loads(open_store(uri).get_bytes("metadata.json"))
        except ObjectStoreError as exc:
            if str(exc).startswith("There is no object"):
                continue
            break
        except ValueError:
            continue
        heads = parse_head_scores(doc if isinstance(doc, dict) else None)
        if heads:
            out[int(step)] = heads
    return out


def head_names(scores: HeadScores) -> list[str]:
    return sorted({h for by_head in scores.values() for h in by_head}, key=head_sort_key)


def series(scores: HeadScores, head: str, name: str) -> tuple[list[int], list[float]]:
    steps = [s for s in sorted(scores) if name in scores[s].get(head, {})]
    return steps, [scores[s][head][name] for s in steps]


def _at(steps: list[int], values: list[float], step: float) -> float:
    return float(np.interp(step, steps, values))


def moved_heads(scores: HeadScores, start: int, end: int, *, min_change: float = 0.1) -> list[tuple[str, str, float]]:
    """(head, score name, change) for every head whose score changed by at least `min_change`
    between the stage's ends (interpolated between checkpoints), biggest change first."""
    out = []
    for head in head_names(scores):
        for name in (PREV_TOKEN, INDUCTION):
            steps, values = series(scores, head, name)
            if len(steps) < 2:
                continue
            delta = _at(steps, values, end) - _at(steps, values, start)
            if math.isfinite(delta) and abs(delta) >= min_change:
                out.append((head, name, delta))
    return sorted(out, key=lambda t: -abs(t[2]))


def describe_moves(moves: Iterable[tuple[str, str, float]], *, limit: int = 3) -> str:
    """"0.2 prev-token +0.45, 1.3 induction +0.61" (the largest `limit` moves)."""
    items = list(moves)
    text = ", ".join(f"{h} {SHORT.get(n, n)} {d:+.2f}" for h, n, d in items[:limit])
    return text + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


def mlflow_head_series(scores: HeadScores) -> dict[str, list[tuple[int, float]]]:
    """`heads/<layer.head>/<score>` at step = training step, for the aggregate run."""
    out: dict[str, list[tuple[int, float]]] = {}
    for head in head_names(scores):
        for name in (PREV_TOKEN, INDUCTION):
            steps, values = series(scores, head, name)
            pts = [(s, v) for s, v in zip(steps, values, strict=True) if math.isfinite(v)]
            if pts:
                out[f"heads/{head}/{name}"] = pts
    return out


def best_by_layer(scores: Mapping[int, Mapping[str, Mapping[str, float]]], layer: int, name: str) -> str | None:
    """The head of `layer` with the highest final `name` score (what the plots single out)."""
    if not scores:
        return None
    last = scores[max(scores)]
    cands = [(v.get(name, -1.0), h) for h, v in last.items() if h.split(".")[0] == str(layer)]
    return max(cands)[1] if cands else None
