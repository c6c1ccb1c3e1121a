"""Small SQL helpers every store module shares: dialect INSERTs, parameter-sized chunks, leases."""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from services.core.numbers import chunks
from services.store.models import utcnow

T = TypeVar("T")

#: values per IN (...) list; SQLite's default limit is 32,766 parameters, Postgres' 65,535
IN_CHUNK = 5000
#: rows per multi-row INSERT (columns × rows stays under both parameter limits)
INSERT_CHUNK = 1000


#: pg_advisory_xact_lock key serialising "which sweeps need this job" changes (submit vs cancel)
MEMBERSHIP_LOCK = 0x11C5_0001


def serialize_membership(session: Session) -> None:
    """Submit and cancel take turns (Postgres): without it, cancelling sweep A while sweep B,
    sharing A's jobs, commits cancels B's jobs too and B waits forever. Every statement after the
    lock sees the other's committed rows (READ COMMITTED). SQLite's BEGIN IMMEDIATE already
    serialises writers."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_advisory_xact_lock(MEMBERSHIP_LOCK)))


def insert(session: Session, table: Any) -> Any:
    """A dialect INSERT that supports ON CONFLICT DO NOTHING and RETURNING."""
    name = session.get_bind().dialect.name
    if name == "postgresql":
        return postgresql.insert(table)
    if name == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"the llc store supports sqlite and postgresql, not {name}; set LLC_DATABASE_URL to one of those.")


def in_chunks(values: Sequence[T]) -> Iterator[Sequence[T]]:
    return chunks(values, IN_CHUNK)


def lease_until(lease_seconds: float) -> datetime:
    if not lease_seconds > 0:
        raise ValueError(f"lease_seconds must be positive, got {lease_seconds!r}.")
    return utcnow() + timedelta(seconds=lease_seconds)
