"""Fault tests reuse the control-plane fixtures: a migrated Postgres per test, a tiny run in S3."""
from __future__ import annotations

from tests.services.conftest import db, storage  # noqa: F401  (fixtures, registered by import)
