"""Alembic migrations of shipway's schema."""
