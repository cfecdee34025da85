"""Releases: one version running in one environment."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, Integer, String, text
from sqlalchemy.orm import Mapped, mapped_column

from shipway.db import Base, JSONType, UTCDateTime
from shipway.ids import utcnow


class Release(Base):
    """Runtime lifecycle of a version in an environment (seed get-version fields)."""

    __tablename__ = "releases"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id"))
    deployment_id: Mapped[str] = mapped_column(ForeignKey("deployments.id"))
    version_id: Mapped[str] = mapped_column(ForeignKey("versions.id"), index=True)
    environment: Mapped[str] = mapped_column(String(63))
    job_id: Mapped[str | None] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(20), default="DEPLOYING")
    replicas: Mapped[int] = mapped_column(Integer, default=0)
    deployed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    rolled_back_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_rollback_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    rollback_count: Mapped[int] = mapped_column(Integer, default=0)
    failure_reason: Mapped[str | None] = mapped_column(String(64))
    failure_diagnostics: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    image_url: Mapped[str | None] = mapped_column(String(500))
    image_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    rollout: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    # Health monitoring after ACTIVE (releases/monitor.py): last probe round, counters.
    health_checked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    unhealthy_since: Mapped[datetime | None] = mapped_column(UTCDateTime())
    recovered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    health: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    __table_args__ = (
        Index("ix_releases_dep_env_status", "deployment_id", "environment", "status"),
        # The database itself refuses a second ACTIVE release in one environment.
        Index(
            "uq_releases_one_active",
            "deployment_id",
            "environment",
            unique=True,
            sqlite_where=text("status = 'ACTIVE'"),
            postgresql_where=text("status = 'ACTIVE'"),
        ),
    )
