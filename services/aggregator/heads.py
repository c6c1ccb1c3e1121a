"""Per-head λ̂ over training: a heads × steps heatmap and heads clustered by curve shape.

The refined-LLC work (Wang et al. 2024) tells head types apart by the shape of each head's
λ̂ curve, not its scale, so each head's curve is normalised to [0, 1] before it is drawn and
clustered (average-linkage on Euclidean distance, the number of clusters chosen by the best
silhouette). Heads are the `component`s of the form l{L}h{H}; one map per setting of the
other hyperparameters.
"""
from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.aggregator.curves import SettingCurve
from services.core.labels import setting_labels

_HEAD = re.compile(r"^l(\d+)h(\d+)$")


@dataclass(frozen=True)
class HeadMap:
    """λ̂ per head (rows, ordered by cluster then layer and head) and checkpoint step (columns)."""

    setting: str                  # the other hyperparameters that differ between maps ("" if one map)
    heads: tuple[str, ...]
    steps: tuple[int, ...]
    values: np.ndarray            # (heads, steps) λ̂ mean, NaN where a head has no estimate
    normalised: np.ndarray        # each row scaled to [0, 1]
    clusters: tuple[int, ...]     # cluster id per row (0 = the cluster of the first row)

    def cluster_members(self) -> dict[int, list[str]]:
        out: dict[int, list[str]] = defaultdict(list)
        for head, c in zip(self.heads, self.clusters, strict=True):
            out[c].append(head)
        return dict(out)

    def describe(self) -> str:
        groups = "; ".join(f"{c + 1}: {', '.join(m)}" for c, m in self.cluster_members().items())
        return f"heads clustered by λ̂ curve shape{' (' + self.setting + ')' if self.setting else ''}: {groups}"


def normalise_rows(values: np.ndarray) -> np.ndarray:
    """Each row to [0, 1] over its finite entries (a flat row becomes 0.5); NaN stays NaN."""
    lo = np.nanmin(values, axis=1, keepdims=True)
    span = np.nanmax(values, axis=1, keepdims=True) - lo
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(span > 0, (values - lo) / np.where(span > 0, span, 1.0), 0.5)
    return np.where(np.isfinite(values), out, np.nan)


def _silhouette(dist: np.ndarray, labels: np.ndarray) -> float:
    scores = []
    for i in range(len(labels)):
        own = labels == labels[i]
        if own.sum() <= 1:
            scores.append(0.0)
            continue
        a = dist[i, own].sum() / (own.sum() - 1)
        b = min(dist[i, labels == c].mean() for c in set(labels.tolist()) if c != labels[i])
        scores.append((b - a) / max(a, b) if max(a, b) > 0 else 0.0)
    return float(np.mean(scores))


def cluster_curves(normalised: np.ndarray, *, max_clusters: int = 6) -> np.ndarray:
    """Cluster ids (0..k-1, numbered in order of first appearance) of the rows' shapes."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import pdist, squareform

    n = normalised.shape[0]
    if n < 3:
        return np.zeros(n, dtype=int)
    x = np.where(np.isfinite(normalised), normalised, np.nanmean(normalised, axis=1, keepdims=True))
    x = np.nan_to_num(x, nan=0.5)
    condensed = pdist(x)
    if not np.any(condensed > 1e-12):
        return np.zeros(n, dtype=int)
    tree = linkage(condensed, method="average")
    dist = squareform(condensed)
    best, best_score = np.zeros(n, dtype=int), -np.inf
    for k in range(2, min(max_clusters, n - 1) + 1):
        labels = fcluster(tree, t=k, criterion="maxclust")
        if len(set(labels.tolist())) < 2:
            continue
        score = _silhouette(dist, labels)
        if score > best_score + 1e-9:
            best, best_score = labels, score
    order: dict[int, int] = {}
    return np.array([order.setdefault(int(c), len(order)) for c in best])


def head_maps(curves: Sequence[SettingCurve]) -> list[HeadMap]:
    """One map per setting of the non-component hyperparameters that has ≥ 3 heads over ≥ 2 steps."""
    groups: dict[str, list[SettingCurve]] = defaultdict(list)
    others: dict[str, dict] = {}
    for c in curves:
        comp = str(c.hyperparameters.get("component", ""))
        if _HEAD.match(comp) and c.points:
            rest = {k: v for k, v in c.hyperparameters.items() if k != "component"}
            key = repr(sorted(rest.items()))
            groups[key].append(c)
            others[key] = rest
    keys = [k for k, g in groups.items() if len(g) >= 3]
    labels = dict(zip(keys, setting_labels([others[k] for k in keys]), strict=True)) if len(keys) > 1 else {}
    maps = []
    for key in keys:
        group = sorted(groups[key], key=lambda c: tuple(int(x) for x in _HEAD.match(c.hyperparameters["component"]).groups()))
        steps = sorted({p.step for c in group for p in c.points})
        if len(steps) < 2:
            continue
        col = {s: j for j, s in enumerate(steps)}
        values = np.full((len(group), len(steps)), np.nan)
        for i, c in enumerate(group):
            for p in c.points:
                values[i, col[p.step]] = p.llc_mean
        norm = normalise_rows(values)
        clusters = cluster_curves(norm)
        order = sorted(range(len(group)), key=lambda i: (clusters[i], i))
        maps.append(HeadMap(setting=labels.get(key, ""), heads=tuple(group[i].hyperparameters["component"] for i in order),
                            steps=tuple(steps), values=values[order], normalised=norm[order],
                            clusters=tuple(int(clusters[i]) for i in order)))
    return maps


def plot_head_map(path: Path, hm: HeadMap, *, title: str) -> Path:
    """Heatmap of the normalised per-head λ̂ (rows: heads grouped by cluster; columns: checkpoints)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(hm.steps) + 3), max(3.0, 0.28 * len(hm.heads) + 1.5)))
    im = ax.imshow(np.ma.masked_invalid(hm.normalised), aspect="auto", cmap="viridis", vmin=0, vmax=1,
                   interpolation="nearest")
    ax.set_yticks(range(len(hm.heads)), [f"{h} (c{c + 1})" for h, c in zip(hm.heads, hm.clusters, strict=True)],
                  fontsize=8)
    ticks = np.linspace(0, len(hm.steps) - 1, min(len(hm.steps), 10)).round().astype(int)
    ax.set_xticks(ticks, [str(hm.steps[t]) for t in ticks], rotation=45, fontsize=8)
    for i in range(1, len(hm.clusters)):
        if hm.clusters[i] != hm.clusters[i - 1]:
            ax.axhline(i - 0.5, color="white", lw=2)
    ax.set_xlabel("training step (checkpoints)")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, label="λ̂, normalised per head")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
