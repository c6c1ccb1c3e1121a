"""Where the service's state lives: the tools' own variables, else the embedded default.

One place resolves every endpoint so that the embedded default (SQLite file, local
object store, local MLflow store, local Ray) and production (Postgres, S3, MLflow
server, Ray cluster) go through the same code paths.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from workers.cache import default_cache_dir


def llc_home() -> Path:
    """Root of the embedded default's files (`LLC_HOME`, default ~/.llc)."""
    return Path(os.environ.get("LLC_HOME", Path.home() / ".llc")).expanduser().resolve()


@dataclass(frozen=True)
class Endpoints:
    database_url: str
    storage_uri: str
    tracking_uri: str
    ray_address: str | None
    cache_dir: Path         # where workers cache checkpoints (workers.cache.default_cache_dir)


def endpoints() -> Endpoints:
    home = llc_home()
    return Endpoints(
        database_url=os.environ.get("LLC_DATABASE_URL") or f"sqlite:///{home / 'llc.db'}",
        storage_uri=os.environ.get("LLC_STORAGE_URI") or (home / "objects").as_uri(),
        tracking_uri=os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home / 'mlflow.db'}",
        ray_address=os.environ.get("RAY_ADDRESS") or None,
        cache_dir=default_cache_dir(),
    )


def project_root() -> Path:
    """The repository root (conf/ and migrations/ live there)."""
    return Path(__file__).resolve().parents[2]
