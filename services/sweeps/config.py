"""Compose the Hydra config (config.yaml + groups + overrides) into a typed `LLCConfig`.

Every composition error becomes one `ConfigError` sentence that names the key and, where
there is one, a close valid key, so the CLI can refuse before anything is written.
"""
from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException, MissingConfigException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from services.core.errors import UserError
from services.core.paths import project_root
from services.sweeps.schema import LLCConfig, register_configs


class ConfigError(UserError, ValueError):
    """An invalid sweep config or override: one sentence naming the key and the fix."""


def config_dir() -> Path:
    return project_root() / "conf"


def load_config(overrides: Sequence[str] = (), *, conf_dir: Path | None = None) -> LLCConfig:
    """Compose `config.yaml` with Hydra overrides (e.g. `sweep=demo`, `sampler.epsilon=[1e-4,3e-4]`)."""
    register_configs()
    directory = (conf_dir or config_dir()).resolve()
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(directory), version_base="1.3"):
            cfg = compose(config_name="config", overrides=list(overrides))
        # Hydra lets `+key=...` add keys even to a structured config: refuse them here.
        extra = _unknown_key(OmegaConf.to_container(cfg, resolve=False), LLCConfig, "")
        if extra:
            raise ConfigError(f"Unknown config key `{extra}`{_suggest(extra)}")
        obj = OmegaConf.to_object(cfg)
    except ConfigError:
        raise
    except (HydraException, OmegaConfBaseException, ValueError) as exc:
        raise ConfigError(_explain(exc, overrides)) from exc
    assert isinstance(obj, LLCConfig)
    for name in ("epsilon", "gamma"):                  # sampler.epsilon=auto (or one number)
        if not isinstance(getattr(obj.sampler, name), list):
            setattr(obj.sampler, name, [getattr(obj.sampler, name)])
    validate(obj)
    return obj


def to_dict(cfg: LLCConfig) -> dict[str, Any]:
    """JSON-safe resolved config (stored on the sweep and logged to MLflow)."""
    container = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    assert isinstance(container, dict)
    return container  # type: ignore[return-value]


def validate(cfg: LLCConfig) -> None:
    """Value checks the types cannot express."""
    s, g = cfg.sweep, cfg.sampler
    checks: list[tuple[bool, str]] = [
        (bool(s.name.strip()), "sweep.name must not be empty; set sweep.name=<name>"),
        (bool(s.run.strip()), "sweep.run must name a training run prefix, e.g. sweep.run=demo-run"),
        (s.checkpoints.every >= 1, f"sweep.checkpoints.every must be at least 1, got {s.checkpoints.every}"),
        (s.checkpoints.start is None or s.checkpoints.stop is None or s.checkpoints.start <= s.checkpoints.stop,
         f"sweep.checkpoints.start ({s.checkpoints.start}) must not exceed sweep.checkpoints.stop ({s.checkpoints.stop})"),
        (s.checkpoints.steps is None or len(s.checkpoints.steps) > 0,
         "sweep.checkpoints.steps is an empty list; give steps or set sweep.checkpoints.steps=null for all"),
        (s.checkpoints.adaptive.initial is None or s.checkpoints.adaptive.initial >= 2,
         "sweep.checkpoints.adaptive.initial must be at least 2 (the curve's two ends), e.g. initial: 10"),
        (s.checkpoints.adaptive.budget >= 0,
         "sweep.checkpoints.adaptive.budget must not be negative; it is how many checkpoints may be added"),
        ((s.checkpoints.adaptive.per_round or 1) >= 1,
         "sweep.checkpoints.adaptive.per_round must be at least 1, or null for a third of the budget"),
        (len(s.seeds) > 0, "sweep.seeds is empty; give at least one seed, e.g. sweep.seeds=[0]"),
        (s.resources.num_cpus > 0, f"sweep.resources.num_cpus must be positive, got {s.resources.num_cpus}"),
        (s.resources.num_gpus >= 0, f"sweep.resources.num_gpus must not be negative, got {s.resources.num_gpus}"),
        (s.device in ("auto", "cpu", "cuda") or s.device.startswith("cuda:"),
         f"sweep.device must be auto, cpu or cuda[:N], got {s.device!r}"),
        (cfg.store.kind in ("sqlite", "postgres"), f"store.kind must be sqlite or postgres, got {cfg.store.kind!r}"),
        (cfg.storage.kind in ("local", "s3"), f"storage.kind must be local or s3, got {cfg.storage.kind!r}"),
        (cfg.tracking.kind in ("local", "server"), f"tracking.kind must be local or server, got {cfg.tracking.kind!r}"),
        (cfg.cluster.kind in ("local", "remote"), f"cluster.kind must be local or remote, got {cfg.cluster.kind!r}"),
        (_cron_ok(cfg.schedule.cron), f"schedule.cron must be a 5-field cron expression, got {cfg.schedule.cron!r}"),
        (len(cfg.schedule.sweeps) > 0, "schedule.sweeps is empty; name at least one sweep config, e.g. schedule.sweeps=[demo]"),
        (_timezone_ok(cfg.schedule.timezone), f"schedule.timezone must be an IANA zone such as UTC, got {cfg.schedule.timezone!r}"),
        (g.baseline in ("paired", "init"), f"sampler.baseline must be paired or init, got {g.baseline!r}"),
        (g.steps_between_draws >= 1, f"sampler.steps_between_draws must be at least 1, got {g.steps_between_draws}"),
        (g.method in ("sgld", "rmsprop_sgld"), f"sampler.method must be sgld or rmsprop_sgld, got {g.method!r}"),
        (s.dtype in ("float32", "bfloat16", "float16"), f"sweep.dtype must be float32, bfloat16 or float16, got {s.dtype!r}"),
        (not (s.components and s.sample_params),
         "sweep.components and sweep.sample_params both restrict the sampled weights; keep one (components: one job per component)"),
        (s.components is None or len(s.components) > 0,
         "sweep.components is an empty list; give components, e.g. sweep.components=[all,heads], or null for the whole model"),
    ]
    for name in ("epsilon", "gamma"):               # numbers or "auto" (calibrated by the estimator)
        values = getattr(g, name)
        for v in values if isinstance(values, list) else [values]:
            if v != "auto" and (isinstance(v, bool) or not isinstance(v, (int, float))):
                checks.append((False, f"sampler.{name} values must be positive numbers or auto, got {v!r}"))
    for name in ("epsilon", "gamma", "nbeta", "num_chains", "num_draws", "num_burnin", "batch_size"):
        values = getattr(g, name)
        checks.append((len(values) > 0, f"sampler.{name} is an empty list; give at least one value, e.g. sampler.{name}=[...]"))
        for v in values:
            if name in ("epsilon", "gamma") and (v == "auto" or isinstance(v, bool) or not isinstance(v, (int, float))):
                continue                              # checked above
            if v is None:
                checks.append((name == "nbeta", f"sampler.{name} may not contain null"))
                continue
            lowest = 0 if name == "num_burnin" else 0.0
            ok = v >= lowest if name == "num_burnin" else v > lowest
            checks.append((ok, f"sampler.{name} values must be {'non-negative' if name == 'num_burnin' else 'positive'}, got {v}"))
    for ok, message in checks:
        if not ok:
            raise ConfigError(message + ".")


def _cron_ok(expr: str) -> bool:
    from croniter import croniter

    return len(expr.split()) == 5 and bool(croniter.is_valid(expr))


def _timezone_ok(name: str) -> bool:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


# ---------------------------------------------------------------- error messages

def _schema_fields(path: str) -> list[str]:
    """Valid keys at a dotted path of the schema (the parent of a wrong key)."""
    node: Any = LLCConfig
    for part in [p for p in path.split(".") if p]:
        if not is_dataclass(node):
            return []
        match = {f.name: f for f in fields(node)}.get(part)
        if match is None:
            return []
        node = _field_type(node, part)
    return [f.name for f in fields(node)] if is_dataclass(node) else []


def _unknown_key(node: Any, schema: Any, prefix: str) -> str | None:
    """The first dotted key in `node` that the dataclass `schema` does not declare."""
    if not (is_dataclass(schema) and isinstance(node, dict)):
        return None
    names = {f.name for f in fields(schema)}
    for key, value in node.items():
        full = f"{prefix}{key}"
        if key not in names:
            return full
        found = _unknown_key(value, _field_type(schema, str(key)), f"{full}.")
        if found:
            return found
    return None


def _field_type(cls: Any, name: str) -> Any:
    import typing

    hints = typing.get_type_hints(cls)
    return hints.get(name)


def _suggest(full_key: str) -> str:
    parent, _, leaf = full_key.rpartition(".")
    valid = _schema_fields(parent)
    close = difflib.get_close_matches(leaf, valid, n=1, cutoff=0.5)
    prefix = f"{parent}." if parent else ""
    if close:
        return f"; did you mean `{prefix}{close[0]}`?"
    if valid:
        return f"; valid keys under `{parent or 'the top level'}` are: {', '.join(valid)}."
    return "."


def _explain(exc: BaseException, overrides: Sequence[str]) -> str:
    """Turn a Hydra/OmegaConf exception chain into one sentence."""
    chain: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in chain:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    for err in chain:
        if isinstance(err, MissingConfigException):
            options = list(getattr(err, "options", None) or [])
            m = re.search(r"'([\w/]+)/(\w+)'", str(err))
            if m:
                group, name = m.group(1), m.group(2)
                close = difflib.get_close_matches(name, options, n=1, cutoff=0.4)
                hint = f"; did you mean `{group}={close[0]}`?" if close else (
                    f"; available: {', '.join(sorted(options))}." if options else ".")
                return f"No config `{name}` in group `{group}`{hint}"
            first = str(err).strip().splitlines()[0]
            return first.rstrip(".") + "."
    for err in chain:
        if isinstance(err, ConfigKeyError):
            key = _full_key(err)
            if key:
                return f"Unknown config key `{key}`{_suggest(key)}"
        if isinstance(err, ValidationError):
            key = _full_key(err)
            msg = str(err).strip().splitlines()[0]
            return f"Invalid value for `{key}`: {msg.rstrip('.')}; give a value of the right type." if key else msg
    for err in chain:
        if isinstance(err, OmegaConfBaseException):
            key = _full_key(err)
            msg = str(err).strip().splitlines()[0]
            if key and re.search(r"Key '[^']+' not in", msg):
                return f"Unknown config key `{key}`{_suggest(key)}"
            return f"Invalid config at `{key}`: {msg}" if key else msg
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    m = re.search(r"Could not override '([^']+)'", text)
    if m:
        return f"Unknown config key `{m.group(1)}`{_suggest(m.group(1))}"
    return f"Invalid overrides {list(overrides)}: {text}"


def _full_key(err: BaseException) -> str | None:
    key = getattr(err, "full_key", None)
    if key:
        return str(key)
    m = re.search(r"full_key: ([\w.\[\]]+)", str(err))
    return m.group(1) if m else None
