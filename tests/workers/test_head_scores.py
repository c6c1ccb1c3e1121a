"""Per-head previous-token and induction scores, on hand-built attention patterns and a real model."""
from __future__ import annotations

import torch

from workers.head_scores import INDUCTION, PREV_TOKEN, head_sort_key, induction_targets, parse_head_scores, \
    scores_from_attentions
from workers.models import AttnOnlyConfig, AttnOnlyForCausalLM


def _tokens() -> torch.Tensor:
    # A segment [5, 6, 7, 8] repeated: positions 5..7 of the copy find their token earlier at 1..3.
    return torch.tensor([[9, 5, 6, 7, 8, 5, 6, 7, 8, 3]])


def test_induction_targets_point_after_the_earlier_occurrence() -> None:
    rows, queries, keys = induction_targets(_tokens())
    assert queries.tolist() == [5, 6, 7, 8] and keys.tolist() == [2, 3, 4, 5] and rows.tolist() == [0] * 4
    # No repeat → no targets; a token right before itself (p = q − 1) is not an induction target.
    assert induction_targets(torch.tensor([[1, 2, 3, 4]]))[1].numel() == 0
    assert induction_targets(torch.tensor([[1, 1, 2]]))[1].numel() == 0


def test_scores_of_a_previous_token_head_and_an_induction_head() -> None:
    tokens = _tokens()
    t = tokens.shape[1]
    prev = torch.zeros(1, 1, t, t)
    prev[0, 0, 0, 0] = 1.0
    prev[0, 0, torch.arange(1, t), torch.arange(0, t - 1)] = 1.0
    induction = torch.tril(torch.ones(t, t)) / torch.arange(1, t + 1)[:, None]  # uniform causal attention
    induction = induction.clone()[None, None]
    _, queries, keys = induction_targets(tokens)
    induction[0, 0, queries] = 0.0
    induction[0, 0, queries, keys] = 1.0
    uniform = (torch.tril(torch.ones(t, t)) / torch.arange(1, t + 1)[:, None])[None, None]
    layer0 = torch.cat([prev, uniform], dim=1)
    layer1 = torch.cat([uniform, induction], dim=1)
    scores = scores_from_attentions([layer0, layer1], tokens)
    assert set(scores) == {"0.0", "0.1", "1.0", "1.1"}
    assert scores["0.0"][PREV_TOKEN] == 1.0 and scores["1.1"][INDUCTION] == 1.0
    assert scores["0.1"][PREV_TOKEN] < 0.5 and scores["1.0"][INDUCTION] < 0.5 and scores["0.0"][INDUCTION] < 0.5


def test_real_model_scores_are_probabilities_per_head() -> None:
    torch.manual_seed(0)
    model = AttnOnlyForCausalLM(AttnOnlyConfig(vocab_size=16, n_positions=12, d_model=16, n_heads=2, n_layers=2))
    from workers.head_scores import head_scores

    tokens = torch.randint(0, 16, (8, 12))
    scores = head_scores(model, tokens)
    assert sorted(scores, key=head_sort_key) == ["0.0", "0.1", "1.0", "1.1"]
    for s in scores.values():
        assert 0.0 <= s[PREV_TOKEN] <= 1.0 and 0.0 <= s[INDUCTION] <= 1.0
    assert model.training  # restored


def test_parse_head_scores_keeps_only_usable_entries() -> None:
    doc = {"heads": {"0.1": {"prev_token": 0.8, "induction": 0.1, "other": 3}, "1.0": "bad", "1.1": {"x": 1}}}
    assert parse_head_scores(doc) == {"0.1": {"prev_token": 0.8, "induction": 0.1}}
    assert parse_head_scores({"loss": 1.0}) == {} and parse_head_scores(None) == {}
    assert sorted(["1.10", "1.9", "0.2"], key=head_sort_key) == ["0.2", "1.9", "1.10"]
