"""Alembic environment: runs migrations on the configured database."""

from alembic import context
from sqlalchemy import Connection

from shipway.db import get_engine
from shipway.models import Base

target_metadata = Base.metadata


def run_with(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,  # SQLite needs batch mode to alter tables
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    run_with(connection)
else:
    with get_engine().connect() as conn:
        run_with(conn)
