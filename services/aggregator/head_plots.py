"""PNG plots of the per-head scores: a heatmap (heads × checkpoints) and the stages with their
boundary intervals next to λ̂, the loss and the heads that matter (layer-0 previous-token,
layer-1 induction)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from services.aggregator.curves import SettingCurve
from services.aggregator.head_scores import SHORT, HeadScores, head_names, series
from services.aggregator.plots import LossSeries, _draw_curve, _draw_losses, _figure, _shade_stages, _step_axis
from workers.head_scores import INDUCTION, PREV_TOKEN


def plot_head_heatmap(path: Path, *, scores: HeadScores, title: str) -> Path:
    """Two panels (previous-token, induction): one row per head, one column per checkpoint."""
    plt, fig, axes = _figure(2, height=max(2.2, 0.32 * len(head_names(scores)) + 1.2))
    steps = sorted(scores)
    heads = head_names(scores)
    for ax, name in zip(axes, (PREV_TOKEN, INDUCTION), strict=True):
        grid = np.array([[scores[s].get(h, {}).get(name, np.nan) for s in steps] for h in heads])
        im = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_yticks(range(len(heads)), heads)
        ax.set_ylabel(f"{SHORT[name]} score\n(layer.head)")
        fig.colorbar(im, ax=ax, fraction=0.025, pad=0.01)
    ticks = np.unique(np.linspace(0, len(steps) - 1, min(12, len(steps))).astype(int))
    axes[-1].set_xticks(ticks, [str(steps[i]) for i in ticks], rotation=45)
    axes[-1].set_xlabel("checkpoint (training step)")
    axes[0].set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_stages_with_heads(path: Path, *, curve: SettingCurve, boot: Any, losses: LossSeries, scores: HeadScores,
                           title: str) -> Path:
    """λ̂ with its stages and each boundary's 5–95 % interval; the losses; layer-0 previous-token
    and layer-1 induction scores of every head."""
    plt, fig, (ax, ax_loss, ax_heads) = _figure(3, height=3.0)
    for axis in (ax, ax_loss, ax_heads):
        _step_axis(axis)
    _draw_curve(ax, curve, color="C0", label="mean")
    det = boot.detection
    ax.plot(det.fit.grid_steps, det.fit.grid_y, "-", color="C0", lw=2, label="smooth fit")
    for axis in (ax, ax_loss, ax_heads):
        _shade_stages(axis, det, labels=axis is ax)
        for b in boot.boundaries:
            if b.step in det.boundary_steps:
                axis.axvspan(b.low, b.high, color="k", alpha=0.08, lw=0)
    ax.set_ylabel("λ̂")
    ax.set_title(title, pad=18)
    ax.legend(loc="upper left", fontsize=8)
    _draw_losses(ax_loss, losses)
    ax_loss.set_ylabel("loss")
    if losses:
        ax_loss.legend(loc="lower left", fontsize=8)
    for head in head_names(scores):
        layer = head.split(".")[0]
        name = PREV_TOKEN if layer == "0" else INDUCTION
        steps, values = series(scores, head, name)
        ax_heads.plot(steps, values, "-" if layer == "0" else "--", lw=1.5, label=f"{head} {SHORT[name]}")
    ax_heads.set_ylabel("head score")
    ax_heads.set_ylim(0, 1)
    ax_heads.set_xlabel("training step (symlog); grey: boundary 5–95 % intervals")
    if scores:
        ax_heads.legend(loc="upper left", fontsize=7, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
