"""MLflow outbox: which sweep-job links still owe a child run, which sweeps are fully synced,
and a sync lease so two schedulers do not log the same sweep at once; scheduler heartbeats.

Revision ID: 0003
Revises: 0002
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0003'
down_revision: str | Sequence[str] | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('sweep_jobs') as batch:
        batch.add_column(sa.Column('mlflow_run_id', sa.String(length=64), nullable=True))
    with op.batch_alter_table('sweeps') as batch:
        batch.add_column(sa.Column('mlflow_synced_at', sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('mlflow_sync_owner', sa.String(length=255), nullable=True))
        batch.add_column(sa.Column('mlflow_sync_until', sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        'schedulers',
        sa.Column('owner', sa.String(length=255), nullable=False),
        sa.Column('state', sa.String(length=32), nullable=False),
        sa.Column('detail', sa.Text(), nullable=True),
        sa.Column('in_flight', sa.Integer(), nullable=False),
        sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('owner', name=op.f('pk_schedulers')),
    )


def downgrade() -> None:
    op.drop_table('schedulers')
    with op.batch_alter_table('sweeps') as batch:
        batch.drop_column('mlflow_sync_until')
        batch.drop_column('mlflow_sync_owner')
        batch.drop_column('mlflow_synced_at')
    with op.batch_alter_table('sweep_jobs') as batch:
        batch.drop_column('mlflow_run_id')
