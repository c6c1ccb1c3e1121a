"""Hydra composition of conf/: groups, overrides, and one-sentence refusals of bad input."""
from __future__ import annotations

import pytest

from services.sweeps.config import ConfigError, load_config, to_dict
from services.core.endpoints import POSTGRES_DEFAULT, resolve_endpoints, under_storage
from services.sweeps.expand import sampler_points


def test_demo_sweep_with_list_override() -> None:
    cfg = load_config(["sweep=demo", "sampler.epsilon=[1e-4,3e-4]"])
    assert cfg.sweep.name == "demo"
    assert cfg.sweep.run == "demo-run"
    assert cfg.sweep.dataset.uri == "demo-run/dataset"
    assert cfg.sampler.epsilon == [1e-4, 3e-4]
    assert cfg.sampler.num_draws == [100]          # the demo sweep picks the demo sampler preset


def test_small_sweep_uses_tiny_sampler_and_every_other_checkpoint() -> None:
    cfg = load_config(["sweep=small"])
    assert cfg.sweep.checkpoints.every == 2
    assert cfg.sampler.num_draws == [8]
    # a sampler group picked on the command line beats the sweep's preset
    assert load_config(["sweep=small", "sampler=demo"]).sampler.num_draws == [100]


def test_grid_is_the_cartesian_product() -> None:
    cfg = load_config(["sampler.epsilon=[1e-4,3e-4,1e-3]", "sampler.gamma=[10,100]", "sampler.nbeta=[null,5.0]"])
    points = sampler_points(cfg.sampler)
    assert len(points) == 3 * 2 * 2
    assert {(p["epsilon"], p["gamma"], p["nbeta"]) for p in points} == {
        (e, g, b) for e in (1e-4, 3e-4, 1e-3) for g in (10.0, 100.0) for b in (None, 5.0)}


@pytest.mark.parametrize(("override", "expected"), [
    ("sampler.epsilonn=[1e-3]", "`sampler.epsilonn`; did you mean `sampler.epsilon`"),
    ("sweep.checkpoints.evry=2", "did you mean `sweep.checkpoints.every`"),
    ("+sweep.resources.gpus=1", "did you mean `sweep.resources.num_gpus`"),
    ("sweep=dmeo", "No config `dmeo` in group `sweep`; did you mean `sweep=demo`"),
    ("store=postgress", "did you mean `store=postgres`"),
    ("sweep.seeds=[a]", "Invalid value for `sweep.seeds[0]`"),
    ("sampler.num_chains=[1.5]", "Invalid value for `sampler.num_chains[0]`"),
    ("sampler.epsilon=[-1e-3]", "sampler.epsilon values must be positive"),
    ("sweep.checkpoints.every=0", "sweep.checkpoints.every must be at least 1"),
])
def test_bad_override_is_one_sentence_naming_the_key(override: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config([override])
    message = str(err.value)
    assert expected in message
    assert "\n" not in message and "Traceback" not in message


def test_endpoints_follow_the_tools_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLC_DATABASE_URL", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    embedded = resolve_endpoints(load_config())
    assert embedded.database_url.startswith("sqlite:///") and embedded.ray_address is None
    assert resolve_endpoints(load_config(["store=postgres"])).database_url == POSTGRES_DEFAULT
    monkeypatch.setenv("LLC_DATABASE_URL", "postgresql+psycopg://u@db:5432/x")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    ends = resolve_endpoints(load_config(["store=postgres", "tracking=server", "cluster=remote"]))
    assert (ends.database_url, ends.tracking_uri, ends.ray_address) == (
        "postgresql+psycopg://u@db:5432/x", "http://mlflow:5000", "10.0.0.1:6379")
    # an explicit value in the config beats the variable
    assert resolve_endpoints(load_config(["store.url=sqlite:///x.db"])).database_url == "sqlite:///x.db"


def test_relative_uris_go_under_the_storage_uri() -> None:
    assert under_storage("demo-run", "s3://b/p/") == "s3://b/p/demo-run"
    assert under_storage("s3://other/run/", "s3://b/p") == "s3://other/run"


def test_resolved_config_is_json_safe() -> None:
    import json

    d = to_dict(load_config(["sweep=small"]))
    assert json.loads(json.dumps(d))["sweep"]["resources"] == {"num_gpus": 0.0, "num_cpus": 1.0, "memory_gb": None}


def test_epsilon_auto_and_rmsprop_sgld_are_accepted() -> None:
    cfg = load_config(["sampler.epsilon=auto", "sampler.method=rmsprop_sgld"])
    assert cfg.sampler.epsilon == ["auto"]
    (point,) = sampler_points(cfg.sampler)
    assert point["epsilon"] == "auto" and point["method"] == "rmsprop_sgld"
    mixed = load_config(["sampler.epsilon=[auto,1e-4]"])
    assert [p["epsilon"] for p in sampler_points(mixed.sampler)] == ["auto", 1e-4]
    assert "method" not in sampler_points(mixed.sampler)[0]     # plain SGLD settings keep their keys
    with pytest.raises(ConfigError, match="sampler.epsilon values must be positive numbers or auto"):
        load_config(["sampler.epsilon=[fast]"])
    with pytest.raises(ConfigError, match="sampler.method must be sgld or rmsprop_sgld"):
        load_config(["sampler.method=adam"])


def test_gamma_auto_is_accepted_alone_or_in_the_list() -> None:
    cfg = load_config(["sampler.gamma=auto", "sampler.epsilon=auto"])
    (point,) = sampler_points(cfg.sampler)
    assert point["gamma"] == "auto" and point["epsilon"] == "auto"
    mixed = load_config(["sampler.gamma=[auto,100]", "sampler.epsilon=auto"])
    assert [p["gamma"] for p in sampler_points(mixed.sampler)] == ["auto", 100]
    with pytest.raises(ConfigError, match="sampler.gamma values must be positive numbers or auto"):
        load_config(["sampler.gamma=[strong]"])
