"""`llc doctor` against real parts: a migrated Postgres, moto S3, a real `mlflow server`, a local
Ray; each broken endpoint turns the exit code non-zero with the one-sentence fix."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import create_pg_database, drop_pg_database, free_port

pytestmark = pytest.mark.slow


def _doctor(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "COLUMNS": "250", **env}
    return subprocess.run([sys.executable, "-m", "services.cli", "doctor"], env=full, capture_output=True, text=True,
                          timeout=180, cwd=Path(__file__).resolve().parents[2])


@pytest.fixture()
def healthy(db: str, s3_bucket: str, mlflow_server: str, ray_cluster: str, tmp_path: Path) -> dict[str, str]:
    """Every endpoint up: the variables a deployed container gets."""
    return {"LLC_DATABASE_URL": db, "LLC_STORAGE_URI": f"s3://{s3_bucket}/llc", "MLFLOW_TRACKING_URI": mlflow_server,
            "RAY_ADDRESS": ray_cluster, "LLC_CACHE_DIR": str(tmp_path / "cache")}


def test_all_up_exits_zero_with_a_table(healthy: dict[str, str]) -> None:
    out = _doctor(healthy)
    print(out.stdout)   # the table, with each check's seconds
    assert out.returncode == 0, out.stderr + out.stdout
    for name in ("database", "object store", "tracking", "cluster", "cache"):
        assert name in out.stdout
    assert "FAIL" not in out.stdout
    assert "schema at head" in out.stdout
    assert "1 node, 2 CPUs, 0 GPUs" in out.stdout
    assert (Path(healthy["LLC_CACHE_DIR"])).is_dir()


def test_unmigrated_database_names_llc_db_upgrade(healthy: dict[str, str]) -> None:
    empty = create_pg_database()   # a second database, never migrated
    try:
        out = _doctor({**healthy, "LLC_DATABASE_URL": empty})
    finally:
        drop_pg_database(empty)
    assert out.returncode == 1
    assert "llc doctor: database:" in out.stderr
    assert "has no llc schema yet" in out.stderr and "run `llc db upgrade`" in out.stderr


def test_missing_bucket_names_the_bucket(healthy: dict[str, str]) -> None:
    out = _doctor({**healthy, "LLC_STORAGE_URI": "s3://no-such-bucket-llc/x"})
    assert out.returncode == 1
    assert "llc doctor: object store: The bucket 'no-such-bucket-llc'" in out.stderr
    assert "create it or fix the URI" in out.stderr


def test_unreachable_mlflow_names_the_variable(healthy: dict[str, str]) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    out = _doctor({**healthy, "MLFLOW_TRACKING_URI": dead})
    assert out.returncode == 1
    assert f"llc doctor: tracking: The MLflow server at {dead} did not answer" in out.stderr
    assert "MLFLOW_TRACKING_URI" in out.stderr


def test_unwritable_cache_dir_names_llc_cache_dir(healthy: dict[str, str], tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    out = _doctor({**healthy, "LLC_CACHE_DIR": str(blocker / "cache")})
    assert out.returncode == 1
    assert f"llc doctor: cache: The directory {blocker / 'cache'} is not writable" in out.stderr
    assert "LLC_CACHE_DIR" in out.stderr
    # the other endpoints still pass: exactly one problem is reported
    assert out.stderr.count("llc doctor:") == 1


def test_unreachable_ray_names_ray_address(healthy: dict[str, str]) -> None:
    dead = f"127.0.0.1:{free_port()}"
    out = _doctor({**healthy, "RAY_ADDRESS": dead})
    assert out.returncode == 1
    assert f"llc doctor: cluster: Nothing answers at the Ray address {dead}" in out.stderr
