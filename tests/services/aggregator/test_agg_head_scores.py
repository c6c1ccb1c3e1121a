"""Which heads moved in a stage: per-head scores from checkpoint metadata, per-head λ̂ from component curves."""
from __future__ import annotations

from services.aggregator.curves import CheckpointPoint, SettingCurve
from services.aggregator.head_scores import describe_moves, head_llc_moves, mlflow_head_series, moved_heads

STEPS = [0, 100, 200, 400, 800]


def _curve(component: str | None, values: list[float], eps: float = 1e-3) -> SettingCurve:
    hyper = {"epsilon": eps, **({"component": component} if component else {})}
    pts = tuple(CheckpointPoint(step=s, checkpoint_uri=f"u{s}", llc_mean=v, llc_std=1.0, llc_sem=0.5, n_estimates=4,
                                n_jobs=1, loss_wstar=None, r_hat_max=None) for s, v in zip(STEPS, values, strict=True))
    return SettingCurve(key=f"{component}-{eps}", label="", hyperparameters=hyper, points=pts, counts={})


def test_heads_whose_scores_moved_in_a_stage() -> None:
    scores = {s: {"0.1": {"prev_token": 0.1 + (0.6 if s >= 200 else 0.0), "induction": 0.05},
                  "1.2": {"prev_token": 0.1, "induction": 0.05 + (0.5 if s >= 400 else 0.0)}} for s in STEPS}
    early, late = moved_heads(scores, 100, 200), moved_heads(scores, 200, 800)
    assert [(h, n) for h, n, _ in early] == [("0.1", "prev_token")]
    assert [(h, n) for h, n, _ in late] == [("1.2", "induction")]
    assert describe_moves(early) == "0.1 prev-token +0.60"
    series = mlflow_head_series(scores)
    assert series["heads/1.2/induction"][-1] == (800, 0.55) and len(series) == 4


def test_per_head_llc_of_the_same_setting_names_the_heads_that_moved() -> None:
    whole = _curve("all", [20, 22, 40, 80, 82])
    rising = _curve("l1h3", [2, 2, 3, 9, 10])           # moves most between 200 and 400
    flat = _curve("l0h0", [5, 5.2, 5.1, 5.3, 5.2])       # moves, but little within the stage relative to its range
    other_eps = _curve("l0h1", [1, 1, 10, 20, 20], eps=3e-4)
    curves = [whole, rising, flat, other_eps]
    moves = head_llc_moves(curves, whole, 200, 400)
    assert [(h, n) for h, n, _ in moves] == [("1.3", "llc")] and moves[0][2] == 6
    assert describe_moves(moves) == "1.3 λ̂ +6"
    assert head_llc_moves(curves, rising, 200, 400) == []   # only whole-model stages name heads
