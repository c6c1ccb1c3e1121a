"""Per-head λ̂: curves grouped into a heads × steps map, clustered by shape (not scale), drawn as a PNG."""
from __future__ import annotations

import numpy as np

from services.aggregator.curves import build_curves
from services.aggregator.heads import head_maps, plot_head_map
from services.store.entities import ResultRow

STEPS = [0, 10, 100, 1000, 5000, 10000]


def _rows(component: str, curve: list[float], *, first_id: int, eps: float = 1e-4) -> list[ResultRow]:
    return [ResultRow(job_id=first_id + i, key=f"{component}-{eps}-{s}", step=s, checkpoint_uri=f"file:///r/step{s}",
                      hyperparameters={"epsilon": eps, "component": component}, seed=0, status="succeeded", error=None,
                      mlflow_run_id=None, llc_mean=v, llc_std=0.1, llc_per_chain=[v - 0.05, v + 0.05], init_loss=1.0,
                      loss_wstar=1.0, diagnostics={"r_hat": 1.0})
            for i, (s, v) in enumerate(zip(STEPS, curve, strict=True))]


def test_heads_cluster_by_curve_shape_whatever_their_scale(tmp_path) -> None:
    rising = np.array([0.0, 0.1, 0.3, 0.8, 0.95, 1.0])
    bump = np.array([0.1, 0.2, 1.0, 0.4, 0.2, 0.1])
    shapes = {"l0h0": 5 * rising + 1, "l0h1": 40 * bump + 3, "l1h0": 0.5 * rising + 7, "l1h1": 200 * bump,
              "l1h2": 12 * rising, "l0h2": 2 * bump + 0.01}
    rows = [r for i, (head, curve) in enumerate(shapes.items()) for r in _rows(head, list(curve), first_id=100 * i)]
    rows += _rows("all", [1.0] * 6, first_id=999)          # not a head: not on the map
    curves, _ = build_curves(rows)
    (hm,) = head_maps(curves)
    assert hm.steps == tuple(STEPS) and len(hm.heads) == 6
    groups = {frozenset(m) for m in hm.cluster_members().values()}
    assert groups == {frozenset({"l0h0", "l1h0", "l1h2"}), frozenset({"l0h1", "l1h1", "l0h2"})}
    assert np.nanmin(hm.normalised) == 0.0 and np.nanmax(hm.normalised) == 1.0
    assert "heads clustered by λ̂ curve shape: 1: l0h0, l1h0, l1h2; 2: l0h1, l0h2, l1h1" == hm.describe()
    png = plot_head_map(tmp_path / "heads.png", hm, title="per-head λ̂")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_one_map_per_setting_of_the_other_hyperparameters() -> None:
    rows = []
    for j, eps in enumerate((1e-4, 3e-4)):
        for i, head in enumerate(("l0h0", "l0h1", "l0h2")):
            rows += _rows(head, [1.0 + i, 2.0, 3.0 + eps, 4.0, 5.0, 6.0], first_id=1000 * j + 100 * i, eps=eps)
    maps = head_maps(build_curves(rows)[0])
    assert sorted(m.setting for m in maps) == ["eps=0.0001", "eps=0.0003"]
