"""Versions: the immutable record of one publish."""

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
)
from sqlalchemy.orm import Mapped, mapped_column

from shipway.db import Base, JSONType, UTCDateTime
from shipway.ids import utcnow


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
