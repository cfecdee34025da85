"""config_versions (config vars and encrypted secrets per environment), releases.config_version,
and TLS private keys encrypted at rest

Every change of an environment's config is a row of ``config_versions`` (secrets as one
Fernet token); a release records the number it runs with. ``certificates.key_pem`` and
``acme_accounts.key_pem`` were plain text since 0007: existing values are encrypted here
with the first key of SHIPWAY_SECRETS_KEYS (or the generated data_dir/secrets.key), and
decrypted back on downgrade.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

import shipway.db

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

KEY_COLUMNS = (("certificates", "hostname"), ("acme_accounts", "directory_url"))


def upgrade() -> None:
    op.create_table(
        "config_versions",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "workspace_id", sa.String(length=36), sa.ForeignKey("workspaces.id"), nullable=False
        ),
        sa.Column(
            "deployment_id", sa.String(length=40), sa.ForeignKey("deployments.id"), nullable=False
        ),
        sa.Column("environment", sa.String(length=63), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("plain", shipway.db.JSONType, nullable=False),
        sa.Column("secrets", sa.Text(), nullable=True),
        sa.Column("keys", shipway.db.JSONType, nullable=False),
        sa.Column("changes", shipway.db.JSONType, nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", shipway.db.UTCDateTime(timezone=True), nullable=False),
        sa.UniqueConstraint(
            "deployment_id", "environment", "number", name="uq_config_versions_env"
        ),
    )
    op.create_index("ix_config_versions_workspace_id", "config_versions", ["workspace_id"])
    with op.batch_alter_table("releases") as batch:
        batch.add_column(sa.Column("config_version", sa.Integer(), nullable=True))
    _recode(encrypting=True)


def downgrade() -> None:
    _recode(encrypting=False)
    with op.batch_alter_table("releases") as batch:
        batch.drop_column("config_version")
    op.drop_index("ix_config_versions_workspace_id", table_name="config_versions")
    op.drop_table("config_versions")


def _recode(*, encrypting: bool) -> None:
    """Encrypt the plain TLS keys (upgrade), or decrypt them back (downgrade)."""
    from shipway.crypto import decrypt, encrypt, looks_encrypted

    connection = op.get_bind()
    for table_name, key in KEY_COLUMNS:
        table = sa.table(table_name, sa.column(key, sa.String), sa.column("key_pem", sa.Text))
        rows = connection.execute(
            sa.select(table.c[key], table.c.key_pem).where(table.c.key_pem.is_not(None))
        ).all()
        for ident, value in rows:
            if looks_encrypted(value) == encrypting:
                continue  # already as wanted
            recoded = encrypt(value) if encrypting else decrypt(value)
            connection.execute(
                sa.update(table).where(table.c[key] == ident).values(key_pem=recoded)
            )
