"""Bad input gets one clear ValueError naming the problem, before any sampling."""
from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from workers.llc import SGLDConfig, estimate_llc

from .llc_toy_models import half_mse, linear_regression


def _small() -> tuple[torch.nn.Linear, TensorDataset]:
    return linear_regression(n=200, d_in=3, d_out=1)


def _cfg(**kw) -> SGLDConfig:
    return SGLDConfig(**{**dict(num_chains=2, num_draws=5, num_burnin=0, batch_size=32), **kw})


@pytest.mark.parametrize(("field", "value", "match"), [
    ("epsilon", 0.0, "epsilon=0.0 is invalid"),
    ("epsilon", -1e-3, "epsilon=-0.001 is invalid"),
    ("epsilon", float("nan"), "epsilon=nan is invalid"),
    ("gamma", -1.0, "gamma=-1.0 is invalid"),
    ("nbeta", 0.0, "nbeta=0.0 is invalid"),
    ("num_chains", 0, "num_chains=0 is invalid"),
    ("num_draws", 0, "num_draws=0 is invalid"),
    ("batch_size", 0, "batch_size=0 is invalid"),
    ("baseline", "median", "baseline='median' is invalid"),
    ("baseline", 0, "baseline=0 is invalid"),
])
def test_invalid_config_values_are_rejected(field: str, value: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _cfg(**{field: value})


def test_non_finite_weights_are_named() -> None:
    model, data = _small()
    with torch.no_grad():
        model.bias[0] = float("nan")
    with pytest.raises(ValueError, match="parameter 'bias' contains NaN or inf"):
        estimate_llc(model, half_mse, data, config=_cfg())


def test_empty_dataset() -> None:
    model, _ = _small()
    empty = TensorDataset(torch.zeros(0, 3), torch.zeros(0, 1))
    with pytest.raises(ValueError, match="dataset is empty"):
        estimate_llc(model, half_mse, empty, config=_cfg())


def test_batch_larger_than_dataset() -> None:
    model, data = _small()
    with pytest.raises(ValueError, match=r"batch_size=500 is larger than the dataset \(200 items\)"):
        estimate_llc(model, half_mse, data, config=_cfg(batch_size=500))


def test_loss_fn_must_return_a_scalar() -> None:
    model, data = _small()

    def per_sample(m: torch.nn.Module, batch: list[torch.Tensor]) -> torch.Tensor:
        x, y = batch
        return ((m(x) - y) ** 2).squeeze(-1)

    with pytest.raises(ValueError, match=r"must return a scalar .* returned a tensor of shape \(32,\)"):
        estimate_llc(model, per_sample, data, config=_cfg())
    with pytest.raises(ValueError, match="must return a scalar .* returned float"):
        estimate_llc(model, lambda m, b: 1.0, data, config=_cfg())


def test_unmatched_sample_params() -> None:
    model, data = _small()
    with pytest.raises(ValueError, match=r"sample_params=\['attn\.\*'\] matches no parameter"):
        estimate_llc(model, half_mse, data, config=_cfg(sample_params=("attn.*",)))


def test_bad_input_leaves_the_model_untouched() -> None:
    model, data = _small()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError):
        estimate_llc(model, lambda m, b: torch.ones(2), data, config=_cfg())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
