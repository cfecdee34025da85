"""The catalog: the records every feature reads.

Deployments (one app or site) and their environments; versions, the immutable record
of one publish; releases, one version running in one environment.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
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


class Version(Base):
    """One publish: source, artifact, build state, build log and git provenance."""

    __tablename__ = "versions"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    deployment_id: Mapped[str] = mapped_column(ForeignKey("deployments.id"))
    version_number: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(20))
    state: Mapped[str] = mapped_column(String(20), default="created")
    artifact_sha256: Mapped[str | None] = mapped_column(String(80))
    source_sha256: Mapped[str | None] = mapped_column(String(64))
    promoted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id"))
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"))
    external_workspace_id: Mapped[str | None] = mapped_column(String(200))
    external_user_id: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    artifact_manifest: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    runtime_image: Mapped[str | None] = mapped_column(String(500))
    runtime_command: Mapped[str | None] = mapped_column(String(2000))
    runtime_port: Mapped[int | None] = mapped_column(Integer)
    health_check_path: Mapped[str | None] = mapped_column(String(500))
    build_log_uri: Mapped[str | None] = mapped_column(String(500))

    git_branch: Mapped[str] = mapped_column(String(255), default="")
    git_hash: Mapped[str] = mapped_column(String(64), default="")
    git_message: Mapped[str] = mapped_column(Text, default="")
    is_dirty: Mapped[bool] = mapped_column(Boolean, default=False)
    author_name: Mapped[str] = mapped_column(String(255), default="")
    author_email: Mapped[str] = mapped_column(String(255), default="")
    branch_id: Mapped[str] = mapped_column(String(255), default="")
    source_filesystem_id: Mapped[str | None] = mapped_column(String(255))
    pinned: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    acp_type: Mapped[str | None] = mapped_column(String(20))
    sdk_type: Mapped[str | None] = mapped_column(String(40))

    failure_reason: Mapped[str | None] = mapped_column(String(64))
    failure_diagnostics: Mapped[dict[str, Any] | None] = mapped_column(JSONType)

    __table_args__ = (
        UniqueConstraint("deployment_id", "version_number", name="uq_versions_dep_number"),
        Index("ix_versions_dep_state_number", "deployment_id", "state", "version_number"),
        Index("ix_versions_ws_number", "workspace_id", "deployment_id", "version_number"),
    )


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
    # The environment's config version the replicas run with (config_vars); None: no config.
    config_version: Mapped[int | None] = mapped_column(Integer)
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
