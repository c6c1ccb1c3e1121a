"""Scheduler heartbeats: which schedulers are alive and what they are doing, for `llc status`.

A row per running scheduler, refreshed with its lease renewals; removed on a clean stop. A row
whose heartbeat is old belongs to a scheduler that died or cannot reach the store (an outage):
its jobs come back when their leases expire.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from services.store.models import SchedulerBeat, utcnow
from services.store.sql import insert


@dataclass(frozen=True)
class SchedulerInfo:
    owner: str
    state: str
    detail: str | None
    in_flight: int
    started_at: datetime
    heartbeat_at: datetime


def heartbeat(session: Session, *, owner: str, state: str, in_flight: int, detail: str | None = None) -> None:
    now = utcnow()
    stmt = insert(session, SchedulerBeat).values(owner=owner, state=state, detail=detail, in_flight=in_flight,
                                                 started_at=now, heartbeat_at=now)
    session.execute(stmt.on_conflict_do_update(index_elements=["owner"], set_=dict(
        state=state, detail=detail, in_flight=in_flight, heartbeat_at=now)))


def remove(session: Session, *, owner: str) -> None:
    session.execute(delete(SchedulerBeat).where(SchedulerBeat.owner == owner))


def list_schedulers(session: Session) -> list[SchedulerInfo]:
    rows = session.scalars(select(SchedulerBeat).order_by(SchedulerBeat.started_at)).all()
    return [SchedulerInfo(owner=r.owner, state=r.state, detail=r.detail, in_flight=r.in_flight, started_at=r.started_at,
                          heartbeat_at=r.heartbeat_at) for r in rows]
