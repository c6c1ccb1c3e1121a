"""Names of hyperparameter settings, the same in tables, plots, MLflow and the API."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

#: hyperparameter → short name, in display order
LABEL_NAMES: tuple[tuple[str, str], ...] = (
    ("epsilon", "eps"), ("gamma", "gamma"), ("nbeta", "nbeta"), ("num_chains", "chains"),
    ("num_draws", "draws"), ("num_burnin", "burnin"), ("batch_size", "batch"),
    ("steps_between_draws", "thin"), ("baseline", "baseline"), ("sample_params", "params"),
)


def format_value(value: Any) -> str:
    if value is None:
        return "auto"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "+".join(str(v) for v in value)
    return str(value)


def varying_keys(settings: Sequence[Mapping[str, Any]]) -> list[str]:
    """The hyperparameters that differ between `settings` (ε always included when present), display order."""
    keys = {k for s in settings for k in s}
    varying = [k for k in keys if len({format_value(s.get(k)) for s in settings}) > 1]
    known = [name for name, _ in LABEL_NAMES]
    shown = [k for k in known if k in varying or (k == "epsilon" and k in keys)]
    return shown + sorted(k for k in varying if k not in known)


def setting_label(hyperparameters: Mapping[str, Any], shown: Sequence[str]) -> str:
    """e.g. 'eps=0.0003 gamma=100' for the `shown` hyperparameters."""
    short = dict(LABEL_NAMES)
    return " ".join(f"{short.get(k, k)}={format_value(hyperparameters.get(k))}" for k in shown)


def setting_labels(settings: Sequence[Mapping[str, Any]]) -> list[str]:
    """Labels naming only what differs between the settings (ε always shown)."""
    shown = varying_keys(settings)
    return [setting_label(s, shown) for s in settings]
