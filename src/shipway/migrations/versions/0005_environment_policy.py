"""environments.policy and release health monitoring columns

environments.policy: per-environment rollout strategy, health monitoring,
auto-rollback and auto-promote policy. releases: what the health monitor last
saw (health_checked_at, health), when a release became UNHEALTHY and when it
last recovered (the healthy period of auto-promote counts from then).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def _json() -> sa.JSON:
    return sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("environments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("policy", _json(), nullable=True))
    with op.batch_alter_table("releases", schema=None) as batch_op:
        batch_op.add_column(sa.Column("health_checked_at", sa.DateTime(timezone=True)))
        batch_op.add_column(sa.Column("unhealthy_since", sa.DateTime(timezone=True)))
        batch_op.add_column(sa.Column("recovered_at", sa.DateTime(timezone=True)))
        batch_op.add_column(sa.Column("health", _json(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("releases", schema=None) as batch_op:
        batch_op.drop_column("health")
        batch_op.drop_column("recovered_at")
        batch_op.drop_column("unhealthy_since")
        batch_op.drop_column("health_checked_at")
    with op.batch_alter_table("environments", schema=None) as batch_op:
        batch_op.drop_column("policy")
