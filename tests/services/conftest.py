"""Fixtures shared by the control-plane tests: a migrated Postgres and a tiny run in S3."""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from services.store.db import upgrade
from tests.services.sweeps.tiny_runs import tiny_run


@pytest.fixture(scope="module")
def storage(s3_endpoint: str) -> str:
    """The storage URI of a tiny demo run (a few checkpoints) on the moto S3 server."""
    return tiny_run(s3_endpoint)[0]


@pytest.fixture()
def db(fresh_pg_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A throwaway Postgres database at the head revision, named by LLC_DATABASE_URL."""
    upgrade(fresh_pg_url)
    monkeypatch.setenv("LLC_DATABASE_URL", fresh_pg_url)
    yield fresh_pg_url
