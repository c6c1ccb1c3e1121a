"""Which database, object store, tracking server and Ray cluster a command talks to.

Resolved once at the edge (CLI command, `services.api` call, scheduler start) into a frozen
`Endpoints`; everything below takes the values it needs as arguments. Precedence per endpoint:
an explicit config value, else the tool's own variable, else the config group's default
(the embedded default for the sqlite/local groups).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from services.core.errors import ConfigError
from services.core.paths import llc_home

POSTGRES_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/llc"
S3_DEFAULT = "s3://llc-checkpoints"
MLFLOW_SERVER_DEFAULT = "http://127.0.0.1:5000"


@dataclass(frozen=True)
class Endpoints:
    database_url: str
    storage_uri: str
    tracking_uri: str
    ray_address: str | None      # None → start a local Ray
    cache_dir: Path              # where workers cache checkpoints (LLC_CACHE_DIR, else $LLC_HOME/cache)

    def under_storage(self, uri: str) -> str:
        """`uri` itself when it has a scheme, else placed under this storage URI."""
        return under_storage(uri, self.storage_uri)


class _Group(Protocol):
    kind: str


class _StoreGroup(_Group, Protocol):
    url: str | None


class _UriGroup(_Group, Protocol):
    uri: str | None


class _ClusterGroup(_Group, Protocol):
    address: str | None


class EndpointConfig(Protocol):
    """The parts of a composed Hydra config (services.sweeps.schema.LLCConfig) that name endpoints."""

    store: _StoreGroup
    storage: _UriGroup
    tracking: _UriGroup
    cluster: _ClusterGroup


def resolve_endpoints(cfg: EndpointConfig | None = None) -> Endpoints:
    """The endpoints for `cfg` (None: the tools' variables, else the embedded default)."""
    home = llc_home()
    store_url = cfg.store.url if cfg else None
    storage_uri = cfg.storage.uri if cfg else None
    tracking_uri = cfg.tracking.uri if cfg else None
    address = cfg.cluster.address if cfg else None
    database = store_url or os.environ.get("LLC_DATABASE_URL") or (
        POSTGRES_DEFAULT if cfg and cfg.store.kind == "postgres" else f"sqlite:///{home / 'llc.db'}")
    storage = storage_uri or os.environ.get("LLC_STORAGE_URI") or (
        S3_DEFAULT if cfg and cfg.storage.kind == "s3" else (home / "objects").as_uri())
    tracking = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or (
        MLFLOW_SERVER_DEFAULT if cfg and cfg.tracking.kind == "server" else f"sqlite:///{home / 'mlflow.db'}")
    ray_address = address or os.environ.get("RAY_ADDRESS") or ("auto" if cfg and cfg.cluster.kind == "remote" else None)
    cache_dir = os.environ.get("LLC_CACHE_DIR")
    cache = Path(cache_dir).expanduser() if cache_dir else home / "cache"
    return Endpoints(database_url=database, storage_uri=storage.rstrip("/"), tracking_uri=tracking,
                     ray_address=ray_address, cache_dir=cache)


class StoragePathError(ConfigError, ValueError):
    """A relative run or dataset path that would leave the storage root."""


def under_storage(uri: str, storage_uri: str) -> str:
    """A URI with a scheme stays as is; a relative one is placed under the storage URI and must
    stay there (no `.`/`..` parts), so `sweep.run=../../etc` cannot walk out of the store."""
    if "://" in uri:
        return uri.rstrip("/")
    if any(part in (".", "..") for part in uri.strip("/").split("/")):
        raise StoragePathError(f"The path {uri!r} leaves the storage root {storage_uri}; write it relative to "
                               "the root without '.' or '..' parts, or give a full s3:// or file:// URI.")
    return f"{storage_uri.rstrip('/')}/{uri.strip('/')}"
