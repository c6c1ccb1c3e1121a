"""Developmental stages per sweep and setting; replaced wholesale on every aggregation."""
from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from services.core.numbers import finite_or_none, json_safe
from services.store.entities import StageInfo, StageRow
from services.store.jobkey import setting_key
from services.store.models import Stage, utcnow
from services.store.sweeps import get_sweep

STAGE_KINDS = ("A", "B", "other")


def replace_stages(session: Session, *, sweep_id: int, stages: Sequence[StageRow]) -> None:
    """Replace all of the sweep's stages with `stages` (re-aggregation never duplicates)."""
    get_sweep(session, sweep_id=sweep_id)
    for s in stages:
        if s.kind not in STAGE_KINDS:
            raise ValueError(f"stage kind {s.kind!r} is not 'A', 'B' or 'other'.")
        if s.end_step < s.start_step:
            raise ValueError(f"stage from step {s.start_step} to {s.end_step} ends before it starts.")
    session.execute(delete(Stage).where(Stage.sweep_id == sweep_id))
    now = utcnow()
    session.add_all([Stage(sweep_id=sweep_id, setting_key=setting_key(s.hyperparameters),
                           hyperparameters=dict(s.hyperparameters), start_step=int(s.start_step),
                           end_step=int(s.end_step), kind=s.kind, llc_change=finite_or_none(s.llc_change),
                           loss_change=finite_or_none(s.loss_change),
                           details=json_safe(s.details) if s.details is not None else None, created_at=now)
                     for s in stages])
    session.flush()


def list_stages(session: Session, *, sweep_id: int) -> list[StageInfo]:
    """The sweep's stages ordered by setting, then start step."""
    rows = session.scalars(select(Stage).where(Stage.sweep_id == sweep_id).order_by(Stage.setting_key, Stage.start_step))
    return [StageInfo(hyperparameters=dict(s.hyperparameters), start_step=int(s.start_step), end_step=int(s.end_step),
                      kind=s.kind, llc_change=s.llc_change, loss_change=s.loss_change, details=s.details, id=s.id,
                      sweep_id=s.sweep_id, setting_key=s.setting_key) for s in rows]
