"""Per-head structure of an attention model: previous-token and induction scores.

Two numbers per head say which part of the induction circuit it has become:

- previous-token score: mean attention from position t to t − 1 (t ≥ 1), the layer-0 half;
- induction score: mean attention from a position whose token occurred earlier to the
  position just after that earlier occurrence (its most recent one), the layer-1 half.

Both come from attention patterns on token sequences alone, so they apply to any model that
returns `output_attentions` (uniform attention over ~T/2 keys scores ≈ 2/T). Stored per
checkpoint as `heads` in metadata.json ({"layer.head": {"prev_token": …, "induction": …}}),
which the aggregator reads to say which heads formed in which stage.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

PREV_TOKEN = "prev_token"
INDUCTION = "induction"
SCORE_NAMES: tuple[str, ...] = (PREV_TOKEN, INDUCTION)


def induction_targets(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows, queries, keys): for each position q whose token occurred earlier at p < q − 1 (the
    most recent such p), the key p + 1 an induction head attends to."""
    n, t = tokens.shape
    same = tokens[:, :, None] == tokens[:, None, :]                      # (N, Tq, Tk)
    earlier = torch.tril(torch.ones(t, t, dtype=torch.bool), diagonal=-2)  # p ≤ q − 2, so p + 1 < q
    hits = same & earlier
    has = hits.any(-1)
    pos = torch.arange(t).expand(n, t, t)
    last = torch.where(hits, pos, torch.full_like(pos, -1)).max(-1).values   # most recent earlier occurrence
    rows, queries = has.nonzero(as_tuple=True)
    return rows, queries, last[rows, queries] + 1


def scores_from_attentions(attentions: Sequence[torch.Tensor], tokens: torch.Tensor, *,
                           targets: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
                           ) -> dict[str, dict[str, float]]:
    """{"layer.head": {"prev_token": s, "induction": s}} from per-layer (N, H, T, T) patterns.
    `targets` (rows, queries, keys) replaces the induction targets found from the tokens when
    the task knows them (the demo's repeated segment: chance repeats would dilute the score)."""
    rows, queries, keys = targets if targets is not None else induction_targets(tokens)
    t = tokens.shape[1]
    q = torch.arange(1, t)
    out: dict[str, dict[str, float]] = {}
    for layer, pattern in enumerate(attentions):
        prev = pattern[:, :, q, q - 1].mean(dim=(0, 2))                           # (H,)
        ind = (pattern[rows, :, queries, keys].mean(0) if rows.numel()
               else torch.full((pattern.shape[1],), float("nan")))
        for h in range(pattern.shape[1]):
            out[f"{layer}.{h}"] = {PREV_TOKEN: round(float(prev[h]), 4), INDUCTION: round(float(ind[h]), 4)}
    return out


@torch.no_grad()
def head_scores(model: torch.nn.Module, tokens: torch.Tensor) -> dict[str, dict[str, float]]:
    """Both scores of every head of `model` on `tokens` (N, T), in eval mode."""
    was_training = model.training
    model.eval()
    try:
        out = model(tokens, output_attentions=True)
    finally:
        model.train(was_training)
    return scores_from_attentions(out.attentions, tokens)


def parse_head_scores(doc: Mapping[str, object] | None) -> dict[str, dict[str, float]]:
    """The `heads` entry of a checkpoint's metadata, checked (unusable entries are left out)."""
    heads = (doc or {}).get("heads")
    if not isinstance(heads, Mapping):
        return {}
    out: dict[str, dict[str, float]] = {}
    for name, scores in heads.items():
        if not isinstance(scores, Mapping):
            continue
        vals = {k: float(v) for k, v in scores.items()
                if k in SCORE_NAMES and isinstance(v, (int, float)) and not isinstance(v, bool)}
        if vals:
            out[str(name)] = vals
    return out


def head_sort_key(name: str) -> tuple[int, ...]:
    """"1.10" after "1.9": layer, then head, numerically."""
    try:
        return tuple(int(p) for p in name.split("."))
    except ValueError:
        return (10**9,)
