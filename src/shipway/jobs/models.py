"""Jobs: units of asynchronous work with queue state, lease and progress."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, false, text
from sqlalchemy.orm import Mapped, mapped_column

from shipway.db import Base, JSONType, UTCDateTime
from shipway.ids import utcnow


class Job(Base):
    """One unit of asynchronous work (publish, promote, rollback, retire, noop)."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id"))
    kind: Mapped[str] = mapped_column(String(20))
    queue: Mapped[str] = mapped_column(String(20))
    state: Mapped[str] = mapped_column(String(20), default="queued")
    phase: Mapped[str | None] = mapped_column(String(40))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    deadline_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    progress: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    params: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    failure_reason: Mapped[str | None] = mapped_column(String(64))
    failure_diagnostics: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # Operator control of a canary rollout: held at its step, or one request
    # ("promote_now" | "abort") the running job acts on at its next tick.
    paused: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    control_request: Mapped[str | None] = mapped_column(String(20))
    serial_key: Mapped[str | None] = mapped_column(String(120))
    deployment_id: Mapped[str | None] = mapped_column(String(40))
    environment: Mapped[str | None] = mapped_column(String(63))
    version_id: Mapped[str | None] = mapped_column(String(40))
    release_id: Mapped[str | None] = mapped_column(String(40))
    actor: Mapped[str] = mapped_column(String(200), default="")
    not_before: Mapped[datetime | None] = mapped_column(UTCDateTime())
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    dispatch_count: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    __table_args__ = (
        Index("ix_jobs_state_queue_created", "state", "queue", "created_at"),
        Index("ix_jobs_ws_created", "workspace_id", "created_at"),
        Index("ix_jobs_serial_state", "serial_key", "state", "created_at"),
        Index("ix_jobs_state_lease", "state", "lease_expires_at"),
        Index("ix_jobs_failed_finished", "state", "finished_at"),
        Index("ix_jobs_ws_state_queue_created", "workspace_id", "state", "queue", "created_at"),
        Index("ix_jobs_ws_state_finished", "workspace_id", "state", "finished_at"),
        # At most one running rollout per (deployment, environment), enforced by the database.
        Index(
            "uq_jobs_one_running_per_serial_key",
            "serial_key",
            unique=True,
            sqlite_where=text("state = 'running' AND serial_key IS NOT NULL"),
            postgresql_where=text("state = 'running' AND serial_key IS NOT NULL"),
        ),
    )
