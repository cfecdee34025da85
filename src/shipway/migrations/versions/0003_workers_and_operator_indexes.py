"""workers registry; indexes for the operator views (per-workspace queue and failures)

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy import Text
from sqlalchemy.dialects import postgresql

import shipway.db

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "workers",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("hostname", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("node", sa.String(length=255), nullable=True),
        sa.Column(
            "queues",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("started_at", shipway.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", shipway.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("current_job_id", sa.String(length=40), nullable=True),
        sa.Column("stopped_at", shipway.db.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("workers", schema=None) as batch_op:
        batch_op.create_index("ix_workers_heartbeat", ["heartbeat_at"], unique=False)
        batch_op.create_index("ix_workers_host_pid", ["hostname", "pid"], unique=False)

    with op.batch_alter_table("jobs", schema=None) as batch_op:
        # GET /queue of one workspace: depth, oldest queued, running, rollouts waiting.
        batch_op.create_index(
            "ix_jobs_ws_state_queue_created",
            ["workspace_id", "state", "queue", "created_at"],
            unique=False,
        )
        # GET /queue of one workspace: failures of the last hour.
        batch_op.create_index(
            "ix_jobs_ws_state_finished", ["workspace_id", "state", "finished_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_ws_state_finished")
        batch_op.drop_index("ix_jobs_ws_state_queue_created")
    with op.batch_alter_table("workers", schema=None) as batch_op:
        batch_op.drop_index("ix_workers_host_pid")
        batch_op.drop_index("ix_workers_heartbeat")
    op.drop_table("workers")
