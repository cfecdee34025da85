"""jobs.not_before: delayed jobs (retire after the scale-down delay)

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

import shipway.db

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("not_before", shipway.db.UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("not_before")
