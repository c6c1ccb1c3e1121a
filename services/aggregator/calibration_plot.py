"""PNG of one epsilon=auto or gamma=auto calibration: pilot lambda_hat against the step size (or
the localization strength), the pick marked.

Reads the JSON records the estimator returns (workers/llc/calibration.py, localization.py;
JobResult extra["calibration"] / extra["gamma_calibration"]); usable pilots are filled, rejected
ones hollow with the reason in the legend.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from services.core.calibrations import BY_NAME


def plot_calibration(record: dict[str, Any], path: Path, *, title: str = "epsilon = auto", x: str = "epsilon") -> Path:
    """Write the plot to path (PNG) and return it; x: "epsilon" or "gamma" (the record's pilots and pick)."""
    symbol = BY_NAME[x].symbol
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    try:
        points = [p for p in record.get("points") or [] if _num(p.get(x)) and _num(p.get("llc_mean"))]
        for usable in (True, False):
            sel = [p for p in points if bool(p.get("usable")) == usable]
            if not sel:
                continue
            se = [2 * p["llc_se"] if _num(p.get("llc_se")) else 0.0 for p in sel]
            ax.errorbar([p[x] for p in sel], [p["llc_mean"] for p in sel], yerr=se, fmt="o",
                        mfc="C0" if usable else "none", color="C0" if usable else "C3", capsize=3,
                        label="usable pilot (±2 s.e.)" if usable else "rejected: " + "; ".join(
                            sorted({str(p.get("why")) for p in sel}))[:80])
        pick = record.get(x)
        if _num(pick):
            ax.axvline(pick, color="C2", ls="--", label=f"pick {symbol} = {pick:.3g}" + (" (carried)" if record.get("carried") else ""))
        ax.set_xscale("log")
        ax.set_xlabel(symbol)
        ax.set_ylabel("λ̂ (pilot)")
        ax.set_title(title)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
    return path


def _num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
