"""Bootstrap stage detection: boundary intervals, type probabilities, unresolved stages merged."""
from __future__ import annotations

import numpy as np

from services.aggregator.bootstrap import bootstrap_stages
from services.aggregator.stages import KIND_A, KIND_B, to_x


def _curve(dip: float, *, chains: int = 8, noise: float = 2.0, seed: int = 0):
    """λ̂ flat at 30, a type-B dip of `dip` around step ~150, then a rise to 110 around step ~800
    while the loss falls; per-chain estimates scattered by `noise`."""
    rng = np.random.default_rng(seed)
    steps = np.unique(np.geomspace(1, 3000, 48).astype(int))
    x = to_x(steps)
    dip_curve = -dip / (1 + np.exp(-(x - 4.6) * 6))
    rise = 80 / (1 + np.exp(-(x - 6.6) * 5))
    llc = 30 + dip_curve + rise * (1 + dip / 80)
    loss = 4.0 - 3.0 / (1 + np.exp(-(x - 6.6) * 5))
    estimates = [m + rng.normal(0, noise, chains) for m in llc]
    return steps, estimates, loss


def test_a_b_dip_then_an_a_rise_with_separate_intervals() -> None:
    steps, estimates, loss = _curve(dip=12.0)
    out = bootstrap_stages(steps, estimates, loss=loss, replicates=40, seed=1)
    kinds = [u.stage.kind for u in out.stages]
    assert KIND_B in kinds and KIND_A in kinds, kinds
    b = next(u for u in out.stages if u.stage.kind == KIND_B)
    a = next(u for u in out.stages if u.stage.kind == KIND_A and u.stage.start_step >= b.stage.end_step - 1)
    assert b.kind_probability[KIND_B] > 0.5 and a.kind_probability[KIND_A] > 0.5
    assert b.end is not None and a.start is not None and b.end == a.start       # the shared boundary
    assert b.start is None or not b.start.overlaps(b.end)                      # the B stage is resolved
    assert b.end.low <= b.end.step <= b.end.high and b.end.presence > 0.5
    assert 60 <= b.end.step <= 400                                              # where the dip bottoms out
    assert all(u.resolved for u in out.stages)
    again = bootstrap_stages(steps, estimates, loss=loss, replicates=40, seed=1)
    assert again.boundaries == out.boundaries                                   # deterministic per seed


def test_a_dip_within_the_noise_is_not_reported_as_a_stage() -> None:
    steps, estimates, loss = _curve(dip=1.0, noise=6.0, chains=3)
    out = bootstrap_stages(steps, estimates, loss=loss, replicates=40, seed=1)
    assert all(u.stage.kind != KIND_B for u in out.stages)
    assert all(u.resolved for u in out.stages)


def test_a_flat_curve_has_no_stages() -> None:
    rng = np.random.default_rng(0)
    steps = np.arange(0, 400, 10)
    out = bootstrap_stages(steps, [20 + rng.normal(0, 1, 4) for _ in steps], replicates=10)
    assert out.stages == () and out.replicates == 0


def test_type_probability_retypes_the_same_span_under_each_replicate() -> None:
    """A long type-A stage keeps a high A probability even when replicates split a short stage off
    near its log-midpoint (it once printed "A" with "A 4 %, B 96 %"): each replicate's fit types
    the stage's own span."""
    steps, estimates, loss = _curve(dip=0.0, noise=1.0)
    out = bootstrap_stages(steps, estimates, loss=loss, replicates=40, seed=2)
    for u in out.stages:
        assert max(u.kind_probability, key=u.kind_probability.get) == u.stage.kind, (u.stage, u.kind_probability)
        assert abs(sum(u.kind_probability.values()) - 1.0) < 1e-6
    rise = next(u for u in out.stages if u.stage.kind == KIND_A)
    assert rise.kind_probability[KIND_A] >= 0.9
