"""Job response models (events: shipway.events.schemas)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from shipway.schemas import ReadModel, Timestamp

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class JobRead(ReadModel):
    """A job: queue state, phase, attempts, lease, progress and outcome."""

    id: str
    kind: str
    queue: str
    state: JobState
    phase: str | None
    attempts: int
    max_attempts: int
    lease_owner: str | None
    lease_expires_at: Timestamp | None
    heartbeat_at: Timestamp | None
    deadline_at: Timestamp | None
    progress: dict[str, Any]
    result: dict[str, Any] | None
    failure_reason: str | None
    failure_diagnostics: dict[str, Any] | None
    cancel_requested: bool
    paused: bool = Field(default=False, description="A canary rollout held by an operator")
    control_request: str | None = Field(
        default=None, description="Pending operator request of a canary: promote_now or abort"
    )
    deployment_id: str | None
    environment: str | None
    version_id: str | None
    release_id: str | None
    actor: str
    queue_position: int | None = Field(
        default=None,
        description="For a queued job: 1 = next to run for its (deployment, environment)",
    )
    created_at: Timestamp
    started_at: Timestamp | None
    finished_at: Timestamp | None
    updated_at: Timestamp | None
