"""Shared fixtures that start the real services the tests talk to.

Every fixture here starts a real part (Postgres database, moto S3 server over HTTP,
`mlflow server` subprocess, local Ray cluster) and tears down only what it started.
"""
from __future__ import annotations

import os
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mlflow_proc import MlflowProcess

_TMP = Path(tempfile.mkdtemp(prefix="llc-tests-"))
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TMPDIR", str(_TMP / "ray"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["HF_HUB_OFFLINE"] = "1"
# Nothing in the tests may touch the user's own embedded default.
os.environ["LLC_HOME"] = str(_TMP / "llc-home")
for _var in ("LLC_DATABASE_URL", "MLFLOW_TRACKING_URI", "RAY_ADDRESS", "AWS_ENDPOINT_URL_S3", "LLC_STORAGE_URI"):
    os.environ.pop(_var, None)

PG_ADMIN_URL = os.environ.get("LLC_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pg_admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(sql)


def create_pg_database(prefix: str = "llc_test") -> str:
    """Create a throwaway Postgres database and return its SQLAlchemy URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    _pg_admin(f'CREATE DATABASE "{name}"')
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


def drop_pg_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def tmp_root() -> Path:
    return _TMP


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A throwaway Postgres database for this test session (schema not created)."""
    url = create_pg_database()
    yield url
    drop_pg_database(url)


@pytest.fixture()
def fresh_pg_url() -> Iterator[str]:
    """A throwaway Postgres database for one test."""
    url = create_pg_database()
    yield url
    drop_pg_database(url)


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 over HTTP; boto3 reaches it via AWS_ENDPOINT_URL_S3."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    os.environ["AWS_ENDPOINT_URL_S3"] = endpoint
    os.environ["AWS_ACCESS_KEY_ID"] = "testing"
    os.environ["AWS_SECRET_ACCESS_KEY"] = "testing"
    os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
    yield endpoint
    server.stop()
    os.environ.pop("AWS_ENDPOINT_URL_S3", None)


@pytest.fixture()
def s3_bucket(s3_endpoint: str) -> str:
    """A fresh, empty bucket on the moto server; returns its name."""
    import boto3

    name = f"llc-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def mlflow_server(s3_endpoint: str) -> Iterator[str]:
    """A real `mlflow server` subprocess: Postgres backend store, S3 (moto) artifacts."""
    import boto3

    backend = create_pg_database("llc_mlflow")
    bucket = f"mlflow-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    server = MlflowProcess(backend=backend, artifacts=f"s3://{bucket}/artifacts", port=free_port(), log_dir=_TMP,
                           s3_endpoint=s3_endpoint)
    server.start(timeout=180)
    yield server.uri
    server.kill()
    drop_pg_database(backend)


@pytest.fixture(scope="session")
def ray_cluster(s3_endpoint: str) -> Iterator[str]:
    """One local Ray cluster started in the pytest process (after S3 is up, so its workers see
    AWS_ENDPOINT_URL_S3); subprocess schedulers join it via RAY_ADDRESS=<returned GCS address>.
    Shuts down only this cluster (never `ray stop`)."""
    import ray

    if ray.is_initialized():
        raise RuntimeError("Ray is already initialized in this test process; the ray_cluster fixture owns it.")
    temp = Path(tempfile.mkdtemp(prefix="r", dir=_TMP))
    ctx = ray.init(num_cpus=2, include_dashboard=False, _temp_dir=str(temp), log_to_driver=False,
                   configure_logging=False)
    try:
        yield str(ctx.address_info["gcs_address"])
    finally:
        ray.shutdown()
