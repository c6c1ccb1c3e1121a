"""Store fixtures: the same tests run against a SQLite file and a real Postgres database."""
from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.store import db
from tests.conftest import create_pg_database, drop_pg_database


@pytest.fixture(params=["sqlite", "postgres"])
def empty_url(request: pytest.FixtureRequest, tmp_root: Path) -> Iterator[str]:
    """An empty database (no schema) of each backend."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_root / 'store' / uuid.uuid4().hex / 'llc.db'}"
        yield url
        db.dispose_engines()
    else:
        url = create_pg_database("llc_store")
        yield url
        db.dispose_engines()
        drop_pg_database(url)


@pytest.fixture()
def store_url(empty_url: str) -> str:
    """A database of each backend migrated to head."""
    db.upgrade(empty_url)
    return empty_url
