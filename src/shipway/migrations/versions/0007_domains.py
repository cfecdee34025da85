"""domains, certificates, acme_accounts: hostnames routed to environments and their TLS

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
    op.create_table(
        "certificates",
        sa.Column("hostname", sa.String(length=253), primary_key=True),
        sa.Column(
            "workspace_id", sa.String(length=36), sa.ForeignKey("workspaces.id"), nullable=False
        ),
        sa.Column("source", sa.String(length=20), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("fullchain_pem", sa.Text(), nullable=True),
        sa.Column("key_pem", sa.Text(), nullable=True),
        sa.Column("issuer", sa.String(length=500), nullable=True),
        sa.Column("not_before", shipway.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("not_after", shipway.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", shipway.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("failure_reason", sa.String(length=60), nullable=True),
        sa.Column("failure_diagnostics", shipway.db.JSONType, nullable=True),
        sa.Column("updated_at", shipway.db.UTCDateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_certificates_workspace_id", "certificates", ["workspace_id"])
    op.create_index("ix_certificates_next_attempt_at", "certificates", ["next_attempt_at"])
    op.create_table(
        "acme_accounts",
        sa.Column("directory_url", sa.String(length=500), primary_key=True),
        sa.Column("key_pem", sa.Text(), nullable=False),
        sa.Column("created_at", shipway.db.UTCDateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("acme_accounts")
    op.drop_index("ix_certificates_next_attempt_at", table_name="certificates")
    op.drop_index("ix_certificates_workspace_id", table_name="certificates")
    op.drop_table("certificates")
    op.drop_index("ix_domains_environment_id", table_name="domains")
    op.drop_index("ix_domains_deployment_id", table_name="domains")
    op.drop_index("ix_domains_workspace_id", table_name="domains")
    op.drop_table("domains")
