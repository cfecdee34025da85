"""domains: hostnames routed to environments (generated and custom)

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

import shipway.db

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "domains",
        sa.Column("hostname", sa.String(length=253), primary_key=True),
        sa.Column(
            "workspace_id", sa.String(length=36), sa.ForeignKey("workspaces.id"), nullable=False
        ),
        sa.Column(
            "deployment_id", sa.String(length=40), sa.ForeignKey("deployments.id"), nullable=False
        ),
        sa.Column("environment_id", sa.Integer(), sa.ForeignKey("environments.id"), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", shipway.db.UTCDateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_domains_workspace_id", "domains", ["workspace_id"])
    op.create_index("ix_domains_deployment_id", "domains", ["deployment_id"])
    op.create_index("ix_domains_environment_id", "domains", ["environment_id"])


def downgrade() -> None:
    op.drop_index("ix_domains_environment_id", table_name="domains")
    op.drop_index("ix_domains_deployment_id", table_name="domains")
    op.drop_index("ix_domains_workspace_id", table_name="domains")
    op.drop_table("domains")
