"""Initial schema: training runs, checkpoints, sweeps, jobs (unique job key) + sweep_jobs, results, stages.

Revision ID: 0001
Revises: 
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0001'
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('training_runs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('uri', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_training_runs')),
    sa.UniqueConstraint('uri', name=op.f('uq_training_runs_uri'))
    )
    op.create_table('checkpoints',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('training_run_id', sa.Integer(), nullable=False),
    sa.Column('step', sa.BigInteger(), nullable=False),
    sa.Column('uri', sa.Text(), nullable=False),
    sa.Column('fingerprint', sa.String(length=128), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['training_run_id'], ['training_runs.id'], name=op.f('fk_checkpoints_training_run_id_training_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_checkpoints')),
    sa.UniqueConstraint('uri', 'fingerprint', name=op.f('uq_checkpoints_uri_fingerprint'))
    )
    op.create_index('ix_checkpoints_training_run_id_step', 'checkpoints', ['training_run_id', 'step'])
    op.create_table('sweeps',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('config', sa.JSON(), nullable=False),
    sa.Column('submitted_by', sa.String(length=255), nullable=False),
    sa.Column('submitter_kind', sa.String(length=16), nullable=False),
    sa.Column('training_run_id', sa.Integer(), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('mlflow_run_id', sa.String(length=64), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("status IN ('cancelled', 'finished', 'running', 'submitted')", name=op.f('ck_sweeps_status')),
    sa.CheckConstraint("submitter_kind IN ('person', 'schedule')", name=op.f('ck_sweeps_submitter_kind')),
    sa.ForeignKeyConstraint(['training_run_id'], ['training_runs.id'], name=op.f('fk_sweeps_training_run_id_training_runs'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sweeps'))
    )
    op.create_index('ix_sweeps_name', 'sweeps', ['name'])
    op.create_index('ix_sweeps_status', 'sweeps', ['status'])
    op.create_table('jobs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.Column('checkpoint_id', sa.Integer(), nullable=False),
    sa.Column('hyperparameters', sa.JSON(), nullable=False),
    sa.Column('seed', sa.BigInteger(), nullable=False),
    sa.Column('spec', sa.JSON(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('lease_owner', sa.String(length=255), nullable=True),
    sa.Column('lease_expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('worker_host', sa.String(length=255), nullable=True),
    sa.Column('mlflow_run_id', sa.String(length=64), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("status IN ('cancelled', 'diverged', 'failed', 'pending', 'running', 'succeeded')", name=op.f('ck_jobs_status')),
    sa.ForeignKeyConstraint(['checkpoint_id'], ['checkpoints.id'], name=op.f('fk_jobs_checkpoint_id_checkpoints'), ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_jobs')),
    sa.UniqueConstraint('key', name=op.f('uq_jobs_key'))
    )
    op.create_index('ix_jobs_checkpoint_id', 'jobs', ['checkpoint_id'])
    op.create_index('ix_jobs_lease_owner', 'jobs', ['lease_owner'])
    op.create_index('ix_jobs_status_lease_expires_at', 'jobs', ['status', 'lease_expires_at'])
    op.create_table('stages',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('sweep_id', sa.Integer(), nullable=False),
    sa.Column('setting_key', sa.String(length=64), nullable=False),
    sa.Column('hyperparameters', sa.JSON(), nullable=False),
    sa.Column('start_step', sa.BigInteger(), nullable=False),
    sa.Column('end_step', sa.BigInteger(), nullable=False),
    sa.Column('kind', sa.String(length=8), nullable=False),
    sa.Column('llc_change', sa.Float(), nullable=True),
    sa.Column('loss_change', sa.Float(), nullable=True),
    sa.Column('details', sa.JSON(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("kind IN ('A', 'B', 'other')", name=op.f('ck_stages_kind')),
    sa.ForeignKeyConstraint(['sweep_id'], ['sweeps.id'], name=op.f('fk_stages_sweep_id_sweeps'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_stages')),
    sa.UniqueConstraint('sweep_id', 'setting_key', 'start_step', name=op.f('uq_stages_sweep_id_setting_key_start_step'))
    )
    op.create_index('ix_stages_sweep_id', 'stages', ['sweep_id'])
    op.create_table('results',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('job_id', sa.Integer(), nullable=False),
    sa.Column('llc_mean', sa.Float(), nullable=True),
    sa.Column('llc_std', sa.Float(), nullable=True),
    sa.Column('llc_per_chain', sa.JSON(), nullable=True),
    sa.Column('baseline_loss', sa.Float(), nullable=True),
    sa.Column('init_loss', sa.Float(), nullable=True),
    sa.Column('nbeta', sa.Float(), nullable=True),
    sa.Column('n', sa.BigInteger(), nullable=True),
    sa.Column('num_draws', sa.Integer(), nullable=True),
    sa.Column('num_chains', sa.Integer(), nullable=True),
    sa.Column('diverged', sa.Boolean(), nullable=False),
    sa.Column('diagnostics', sa.JSON(), nullable=True),
    sa.Column('wall_time_s', sa.Float(), nullable=True),
    sa.Column('device', sa.String(length=64), nullable=True),
    sa.Column('payload', sa.JSON(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_results_job_id_jobs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_results')),
    sa.UniqueConstraint('job_id', name=op.f('uq_results_job_id'))
    )
    op.create_table('sweep_jobs',
    sa.Column('sweep_id', sa.Integer(), nullable=False),
    sa.Column('job_id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_sweep_jobs_job_id_jobs'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['sweep_id'], ['sweeps.id'], name=op.f('fk_sweep_jobs_sweep_id_sweeps'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('sweep_id', 'job_id', name=op.f('pk_sweep_jobs'))
    )
    op.create_index('ix_sweep_jobs_job_id', 'sweep_jobs', ['job_id'])


def downgrade() -> None:
    for table in ("sweep_jobs", "results", "stages", "jobs", "sweeps", "checkpoints", "training_runs"):
        op.drop_table(table)
