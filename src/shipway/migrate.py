"""Apply Alembic migrations programmatically (no alembic.ini needed)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from shipway.db import get_engine

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config() -> Config:
    """An Alembic config pointing at shipway's migrations."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def upgrade(revision: str = "head") -> None:
    """Bring the configured database to ``revision``."""
    config = alembic_config()
    engine = get_engine()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
