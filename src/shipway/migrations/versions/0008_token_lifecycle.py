"""api_tokens lifecycle: expiry, rotation lineage

``last_used_at`` and ``revoked_at`` exist since 0001. This adds:

- ``expires_at``: optional; a token is refused (401) from that instant on.
- ``rotated_to``: the id of the token that replaced this one on rotate. The old
  token's ``revoked_at`` is then set to the end of the grace period (possibly now),
  so ``revoked_at`` may lie in the future: a token is refused once
  ``revoked_at <= now``.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

import shipway.db

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("expires_at", shipway.db.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(sa.Column("rotated_to", sa.String(length=40), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.drop_column("rotated_to")
        batch_op.drop_column("expires_at")
