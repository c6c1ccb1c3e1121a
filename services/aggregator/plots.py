"""PNG plots of λ̂ and loss over training (matplotlib, Agg backend: no display needed).

The step axis is symlog with a linear stretch below step 1, so step 0 is drawn where it is
rather than dropped; the smooth fit itself lives on log(step + 1).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from services.aggregator.curves import SettingCurve
from services.aggregator.stages import KIND_A, KIND_B, StageDetection

STAGE_COLORS = {KIND_A: "#4daf4a", KIND_B: "#e41a1c"}
OTHER_COLOR = "#999999"
LossSeries = Mapping[str, tuple[Sequence[float], Sequence[float]]]


def _figure(nrows: int = 1, height: float = 4.5):  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, 1, figsize=(10, height * nrows), sharex=True, squeeze=False)
    return plt, fig, [a for row in axes for a in row]


def _step_axis(ax) -> None:  # type: ignore[no-untyped-def]
    ax.set_xscale("symlog", linthresh=1.0)
    ax.grid(True, which="major", alpha=0.3)


def _shade_stages(ax, detection: StageDetection, *, labels: bool = True) -> None:  # type: ignore[no-untyped-def]
    for stage in detection.stages:
        color = STAGE_COLORS.get(stage.kind, OTHER_COLOR)
        ax.axvspan(stage.start_step, stage.end_step, color=color, alpha=0.12, lw=0)
        if not labels:
            continue
        mid = np.sqrt((stage.start_step + 1.0) * (stage.end_step + 1.0)) - 1.0
        text = f"S{stage.index + 1}: {'type ' + stage.kind if stage.kind in STAGE_COLORS else 'other'}"
        # Just above the axes: inside them, the curves (and a twin loss axis) would cross the label.
        ax.text(mid, 1.01, text, transform=ax.get_xaxis_transform(), ha="center", va="bottom", fontsize=9,
                color=color, fontweight="bold", clip_on=False)
    for step in detection.boundary_steps:
        ax.axvline(step, color="k", ls=":", lw=1)


def _draw_curve(ax, curve: SettingCurve, *, color: str, label: str) -> None:  # type: ignore[no-untyped-def]
    steps, mean, std, _ = curve.arrays()
    band = np.nan_to_num(std, nan=0.0)
    ax.fill_between(steps, mean - band, mean + band, color=color, alpha=0.2, lw=0)
    ax.plot(steps, mean, "o", color=color, ms=4, label=f"λ̂ {label} (±1 sd over chains × seeds)")


def _draw_losses(ax, losses: LossSeries) -> None:  # type: ignore[no-untyped-def]
    styles = ["-", "--", "-.", ":"]
    for i, (name, (steps, values)) in enumerate(losses.items()):
        ax.plot(steps, values, styles[i % len(styles)], color=f"C{(i + 3) % 10}", lw=1.5, label=name)


def plot_setting(path: Path, *, curve: SettingCurve, detection: StageDetection | None, losses: LossSeries,
                 title: str) -> Path:
    """λ̂ with its band and smooth fit, loss on a second axis, stages shaded and labelled."""
    plt, fig, (ax,) = _figure()
    _step_axis(ax)
    _draw_curve(ax, curve, color="C0", label="mean")
    if detection is not None:
        ax.plot(detection.fit.grid_steps, detection.fit.grid_y, "-", color="C0", lw=2, label="smooth fit (log step)")
        _shade_stages(ax, detection)
    ax.set_ylabel("λ̂ (local learning coefficient)", color="C0")
    ax.set_xlabel("training step (symlog)")
    ax.set_title(title, pad=18)
    handles, labels = ax.get_legend_handles_labels()
    if losses:
        ax2 = ax.twinx()
        _draw_losses(ax2, losses)
        ax2.set_ylabel("loss")
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, loc="lower left", fontsize=8, framealpha=0.8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_overview(path: Path, *, curves: Sequence[SettingCurve], detection: StageDetection | None,
                  recommended_key: str | None, losses: LossSeries, title: str) -> Path:
    """Every setting's λ̂ on one axis, losses below; the recommended setting's stages shaded."""
    plt, fig, (ax, ax_loss) = _figure(2, height=3.6)
    for axis in (ax, ax_loss):
        _step_axis(axis)
    for i, curve in enumerate(curves):
        mark = " (recommended)" if curve.key == recommended_key else ""
        _draw_curve(ax, curve, color=f"C{i % 10}", label=curve.label + mark)
        steps, mean, _, _ = curve.arrays()
        ax.plot(steps, mean, "-", color=f"C{i % 10}", lw=2.5 if mark else 1, alpha=0.9)
    if detection is not None:
        _shade_stages(ax, detection)
        _shade_stages(ax_loss, detection, labels=False)
    ax.set_ylabel("λ̂")
    ax.set_title(title, pad=18)
    ax.legend(loc="lower left", fontsize=8, framealpha=0.8)
    _draw_losses(ax_loss, losses)
    ax_loss.set_ylabel("loss")
    ax_loss.set_xlabel("training step (symlog)")
    if losses:
        ax_loss.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
