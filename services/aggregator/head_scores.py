"""Per-head scores over training (from each checkpoint's metadata.json `heads`) and which heads
moved in a stage — by those scores, and by per-head λ̂ when the sweep has head components:
what names the circuit parts behind a λ̂ stage in the stage table."""
from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from services.aggregator.curves import SettingCurve
from workers.head_scores import INDUCTION, PREV_TOKEN, head_sort_key, parse_head_scores

#: step → head ("layer.head") → score name → value
HeadScores = dict[int, dict[str, dict[str, float]]]
SHORT = {PREV_TOKEN: "prev-token", INDUCTION: "induction", "llc": "λ̂"}


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


_COMPONENT_HEAD = re.compile(r"^l(\d+)h(\d+)$")
LLC = "llc"


def head_llc_moves(curves: Sequence[SettingCurve], of: SettingCurve, start: int, end: int, *,
                   min_frac: float = 0.25, z: float = 3.0) -> list[tuple[str, str, float]]:
    """(head "layer.head", "llc", Δλ̂) for every per-head λ̂ curve (component l{L}h{H}) of the
    same other hyperparameters as `of` whose λ̂ moved between the stage's ends by at least
    `min_frac` of its range over training and by more than z noise units (√2 × its median
    standard error); biggest relative move first."""
    if str(of.hyperparameters.get("component", "all")) != "all":
        return []
    rest = {k: v for k, v in of.hyperparameters.items() if k != "component"}
    out = []
    for c in curves:
        m = _COMPONENT_HEAD.match(str(c.hyperparameters.get("component", "")))
        if m is None or {k: v for k, v in c.hyperparameters.items() if k != "component"} != rest or len(c.points) < 2:
            continue
        steps = [p.step for p in c.points]
        values = [p.llc_mean for p in c.points]
        span = max(values) - min(values)
        sems = [p.llc_sem for p in c.points if math.isfinite(p.llc_sem)]
        noise = z * math.sqrt(2) * float(np.median(sems)) if sems else 0.0
        delta = float(np.interp(end, steps, values) - np.interp(start, steps, values))
        if span > 0 and math.isfinite(delta) and abs(delta) >= max(min_frac * span, noise):
            out.append((f"{m.group(1)}.{m.group(2)}", LLC, delta, abs(delta) / span))
    return [(h, n, d) for h, n, d, _ in sorted(out, key=lambda t: -t[3])]


def describe_moves(moves: Iterable[tuple[str, str, float]], *, limit: int = 3) -> str:
    """"0.2 prev-token +0.45, 1.3 induction +0.61" (the largest `limit` moves)."""
    items = list(moves)
    text = ", ".join(f"{h} {SHORT.get(n, n)} {d:+.3g}" if n == LLC else f"{h} {SHORT.get(n, n)} {d:+.2f}"
                     for h, n, d in items[:limit])
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
