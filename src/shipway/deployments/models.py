"""Deployments (one app or site) and their environments."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from shipway.db import Base, JSONType, UTCDateTime
from shipway.ids import utcnow


class Deployment(Base):
    """One app or site: owns versions and environments and their runtime settings."""

    __tablename__ = "deployments"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id"), index=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(20))
    runtime_command: Mapped[str | None] = mapped_column(String(2000))
    runtime_port: Mapped[int] = mapped_column(Integer, default=8080)
    health_check_path: Mapped[str] = mapped_column(String(500), default="/")
    replicas: Mapped[int] = mapped_column(Integer, default=1)
    resources: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    settings: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    latest_version_number: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    __table_args__ = (UniqueConstraint("workspace_id", "name", name="uq_deployments_ws_name"),)


class Environment(Base):
    """A named environment of a deployment, pointing at its active release."""

    __tablename__ = "environments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id"), index=True)
    deployment_id: Mapped[str] = mapped_column(ForeignKey("deployments.id"))
    name: Mapped[str] = mapped_column(String(63))
    active_release_id: Mapped[str | None] = mapped_column(String(40))
    # Rollout strategy default, health monitoring and auto-promote policy (see docs).
    policy: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    __table_args__ = (UniqueConstraint("deployment_id", "name", name="uq_environments_dep_name"),)
