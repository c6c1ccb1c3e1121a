"""`llc doctor`: is every configured endpoint usable from here?

Each check is cheap (one round trip or two) so the command can serve as a readiness or
liveness probe; a failed check carries one sentence naming the thing and the fix.
"""
from __future__ import annotations

import socket
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from services.core.endpoints import Endpoints

#: how long one network probe may wait before the endpoint counts as unreachable
PROBE_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class Check:
    name: str
    target: str
    ok: bool
    detail: str                  # what was found, or the one-sentence fix when not ok
    seconds: float


def run_checks(targets: Endpoints, *, probe_timeout_s: float = PROBE_TIMEOUT_S) -> list[Check]:
    """All checks, the independent network ones concurrently; Ray's in this thread (ray.init wants it)."""
    from services.store.db import masked

    plain: list[tuple[str, str, Callable[[], str]]] = [
        ("database", masked(targets.database_url), lambda: check_database(targets.database_url)),
        ("object store", targets.storage_uri, lambda: check_storage(targets.storage_uri)),
        ("tracking", targets.tracking_uri, lambda: check_tracking(targets.tracking_uri, timeout_s=probe_timeout_s)),
        ("cache", str(targets.cache_dir), lambda: check_cache(targets.cache_dir)),
    ]
    with ThreadPoolExecutor(max_workers=len(plain)) as pool:
        futures = [(name, target, pool.submit(_timed, fn)) for name, target, fn in plain]
        ray_check = _timed(lambda: check_ray(targets.ray_address, timeout_s=probe_timeout_s))
        results = [Check(name, target, *f.result()) for name, target, f in futures]
    results.insert(3, Check("cluster", targets.ray_address or "local (started per command)", *ray_check))
    return results


def _timed(fn: Callable[[], str]) -> tuple[bool, str, float]:
    t0 = time.perf_counter()
    try:
        detail, ok = fn(), True
    except Exception as exc:  # noqa: BLE001 - every failure becomes a row of the table
        detail, ok = _sentence(exc), False
    return ok, detail, time.perf_counter() - t0


def _sentence(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[0].upper() + text[1:]


# ----------------------------------------------------------------------------- checks

def check_database(url: str) -> str:
    """Reachable and at this code's head revision (an embedded SQLite file not made yet is fine)."""
    from sqlalchemy.engine import make_url

    from services.store.db import check_schema, head_revision

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and not Path(parsed.database).exists():
        return f"embedded SQLite, created at revision {head_revision()} by the first command"
    check_schema(url)
    return f"reachable, schema at head ({head_revision()})"


def check_storage(uri: str) -> str:
    """Listable and writable: one list, one put, one delete of a probe object."""
    from workers.objectstore import open_store

    store = open_store(uri)
    store.list("llc-doctor/")
    key = f"llc-doctor/probe-{uuid.uuid4().hex}"
    store.put_bytes(key, b"llc doctor probe\n")
    store.delete(key)
    return "listable and writable"


def check_tracking(uri: str, *, timeout_s: float) -> str:
    """An MLflow server answers /health; a local store's directory is writable."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme in ("http", "https"):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as r:
                if r.status != 200:
                    raise ConnectionError(f"HTTP {r.status}")
        except (OSError, ConnectionError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise RuntimeError(f"the MLflow server at {uri} did not answer {url} ({reason}); start it "
                               "or point MLFLOW_TRACKING_URI at a running server.") from None
        return "server healthy"
    if parsed.scheme == "sqlite":
        folder = Path(uri[len("sqlite:///"):]).expanduser().parent
    elif parsed.scheme in ("file", ""):
        folder = Path(parsed.path or uri).expanduser()
    else:
        raise RuntimeError(f"MLFLOW_TRACKING_URI {uri!r} is neither http(s):// nor a local sqlite:/// or file: "
                           "store; point it at an MLflow server.")
    _probe_writable(folder, fix="make it writable or point MLFLOW_TRACKING_URI elsewhere")
    return "local store, writable"


def check_ray(address: str | None, *, timeout_s: float) -> str:
    """Connect as a driver and read the live nodes' resources; a configured address must be up."""
    if not address:
        return "none configured; each command starts a local Ray (set RAY_ADDRESS to use a cluster)"
    import ray

    started = False
    if not ray.is_initialized():
        _probe_port(address, timeout_s=timeout_s)
        from services.scheduler.cluster import connect

        started = connect(address=address)
    try:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        total = ray.cluster_resources()
    finally:
        if started:
            ray.shutdown()
    cpus, gpus = float(total.get("CPU", 0)), float(total.get("GPU", 0))
    if not nodes or cpus <= 0:
        raise RuntimeError(f"the Ray cluster at {address} has no live node with CPUs; start a worker "
                           "(`ray start --address=...`) or scale the worker group.")
    return f"{len(nodes)} node{'s' * (len(nodes) != 1)}, {cpus:g} CPUs, {gpus:g} GPUs"


def _probe_port(address: str, *, timeout_s: float) -> None:
    """Fail fast on a closed GCS port instead of waiting out ray.init's own reconnect loop."""
    host_port = address.split("://", 1)[-1]
    if host_port == "auto" or ":" not in host_port:
        return
    host, port = host_port.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except (OSError, ValueError) as exc:
        raise RuntimeError(f"nothing answers at the Ray address {address} ({exc}); start the Ray head "
                           "or fix RAY_ADDRESS.") from None


def check_cache(folder: Path) -> str:
    _probe_writable(folder, fix="make it writable by this user or point LLC_CACHE_DIR elsewhere")
    return "writable"


def _probe_writable(folder: Path, *, fix: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".llc-doctor-"):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise RuntimeError(f"the directory {folder} is not writable ({reason}); {fix}.") from None


def all_ok(checks: list[Check]) -> bool:
    return all(c.ok for c in checks)

