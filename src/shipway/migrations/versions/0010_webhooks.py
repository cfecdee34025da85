"""webhook_endpoints, webhook_deliveries, webhook_attempts and the outbox cursor

The cursor starts at the newest event: webhooks are about what happens from now on,
not the audit trail's history.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

import shipway.db

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "webhook_endpoints",
        sa.Column("id", sa.String(length=40), primary_key=True),
        sa.Column(
            "workspace_id", sa.String(length=36), sa.ForeignKey("workspaces.id"), nullable=False
        ),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("description", sa.String(length=200), nullable=False),
        sa.Column("event_types", shipway.db.JSONType, nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("secret", sa.Text(), nullable=False),
        sa.Column("previous_secret", sa.Text(), nullable=True),
        sa.Column(
            "previous_secret_expires_at", shipway.db.UTCDateTime(timezone=True), nullable=True
        ),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", shipway.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", shipway.db.UTCDateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_webhook_endpoints_workspace_id", "webhook_endpoints", ["workspace_id"])
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.String(length=40), primary_key=True),
        sa.Column(
            "workspace_id", sa.String(length=36), sa.ForeignKey("workspaces.id"), nullable=False
        ),
        sa.Column(
            "endpoint_id",
            sa.String(length=40),
            sa.ForeignKey("webhook_endpoints.id"),
            nullable=False,
        ),
        sa.Column("event_type", sa.String(length=40), nullable=False),
        sa.Column("source_key", sa.String(length=120), nullable=False),
        sa.Column("payload", shipway.db.JSONType, nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("trigger", sa.String(length=20), nullable=False),
        sa.Column("next_attempt_at", shipway.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("deadline_at", shipway.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.String(length=200), nullable=True),
        sa.Column("created_at", shipway.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", shipway.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", shipway.db.UTCDateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("endpoint_id", "source_key", name="uq_webhook_deliveries_source"),
    )
    op.create_index("ix_webhook_deliveries_due", "webhook_deliveries", ["state", "next_attempt_at"])
    op.create_index(
        "ix_webhook_deliveries_endpoint", "webhook_deliveries", ["endpoint_id", "created_at"]
    )
    op.create_table(
        "webhook_attempts",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column(
            "delivery_id",
            sa.String(length=40),
            sa.ForeignKey("webhook_deliveries.id"),
            nullable=False,
        ),
        sa.Column("outcome", sa.String(length=20), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.String(length=200), nullable=True),
        sa.Column("response_body", sa.Text(), nullable=False),
        sa.Column("duration_ms", sa.Float(), nullable=False),
        sa.Column("trigger", sa.String(length=20), nullable=False),
        sa.Column("started_at", shipway.db.UTCDateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_webhook_attempts_delivery_id", "webhook_attempts", ["delivery_id"])
    cursor = op.create_table(
        "webhook_cursor",
        sa.Column("name", sa.String(length=40), primary_key=True),
        sa.Column("last_event_id", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", shipway.db.UTCDateTime(timezone=True), nullable=False),
    )
    newest = op.get_bind().scalar(sa.text("SELECT COALESCE(MAX(id), 0) FROM events"))
    from shipway.ids import utcnow

    op.bulk_insert(
        cursor, [{"name": "events", "last_event_id": int(newest or 0), "updated_at": utcnow()}]
    )


def downgrade() -> None:
    op.drop_table("webhook_cursor")
    op.drop_index("ix_webhook_attempts_delivery_id", table_name="webhook_attempts")
    op.drop_table("webhook_attempts")
    op.drop_index("ix_webhook_deliveries_endpoint", table_name="webhook_deliveries")
    op.drop_index("ix_webhook_deliveries_due", table_name="webhook_deliveries")
    op.drop_table("webhook_deliveries")
    op.drop_index("ix_webhook_endpoints_workspace_id", table_name="webhook_endpoints")
    op.drop_table("webhook_endpoints")
