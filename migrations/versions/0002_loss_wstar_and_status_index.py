"""results.loss_wstar (L_n(w*), the full-data loss at the checkpoint) and a (status, id) index on jobs.

Revision ID: 0002
Revises: 0001
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0002'
down_revision: str | Sequence[str] | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('results') as batch:
        batch.add_column(sa.Column('loss_wstar', sa.Float(), nullable=True))
    op.create_index('ix_jobs_status_id', 'jobs', ['status', 'id'])


def downgrade() -> None:
    op.drop_index('ix_jobs_status_id', table_name='jobs')
    with op.batch_alter_table('results') as batch:
        batch.drop_column('loss_wstar')
