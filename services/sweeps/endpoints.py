"""Where a composed config points: an explicit config value, else the tool's own variable,
else the group's default (the embedded default for sqlite/local groups)."""
from __future__ import annotations

import os
from dataclasses import dataclass

from services.core.settings import endpoints as embedded_endpoints
from services.sweeps.schema import LLCConfig

POSTGRES_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/llc"
S3_DEFAULT = "s3://llc-checkpoints"
MLFLOW_SERVER_DEFAULT = "http://127.0.0.1:5000"


@dataclass(frozen=True)
class ConfigEndpoints:
    database_url: str
    storage_uri: str
    tracking_uri: str
    ray_address: str | None      # None → start a local Ray


def resolve_endpoints(cfg: LLCConfig) -> ConfigEndpoints:
    base = embedded_endpoints()
    database = cfg.store.url or os.environ.get("LLC_DATABASE_URL") or (
        POSTGRES_DEFAULT if cfg.store.kind == "postgres" else base.database_url)
    storage = cfg.storage.uri or os.environ.get("LLC_STORAGE_URI") or (
        S3_DEFAULT if cfg.storage.kind == "s3" else base.storage_uri)
    tracking = cfg.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI") or (
        MLFLOW_SERVER_DEFAULT if cfg.tracking.kind == "server" else base.tracking_uri)
    ray_address = cfg.cluster.address or os.environ.get("RAY_ADDRESS") or (
        "auto" if cfg.cluster.kind == "remote" else None)
    return ConfigEndpoints(database_url=database, storage_uri=storage.rstrip("/"), tracking_uri=tracking,
                           ray_address=ray_address)


def under_storage(uri: str, storage_uri: str) -> str:
    """A URI with a scheme stays as is; a relative one is placed under the storage URI."""
    if "://" in uri:
        return uri.rstrip("/")
    return f"{storage_uri.rstrip('/')}/{uri.strip('/')}"
