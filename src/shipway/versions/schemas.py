"""Version response models: the seed list row, the full row and the lifecycle shape."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shipway.schemas import ReadModel, Timestamp

VersionState = Literal["created", "building", "ready", "failed", "archived"]
ReleaseStatus = Literal[
    "DEPLOYING", "ACTIVE", "FAILED", "UNHEALTHY", "DRAINING", "RETIRED", "ROLLED_BACK"
]


class VersionSummary(ReadModel):
    """One row of ``GET /deployments/{id}/versions`` (seed deployment-versions-api)."""

    id: str
    deployment_id: str
    version_number: int
    kind: Literal["static", "container"]
    state: VersionState
    artifact_sha256: str | None = Field(
        description="SHA-256 of the built image (plain hex, like source_sha256)"
    )
    source_sha256: str | None
    promoted_at: Timestamp | None
    workspace_id: str
    project_id: str
    external_workspace_id: str | None
    external_user_id: str | None
    created_at: Timestamp

    @field_validator("artifact_sha256", mode="before")
    @classmethod
    def _plain_hex(cls, value: object) -> object:
        """The engine's image id is ``sha256:<hex>``; every *_sha256 field is plain hex."""
        return value.removeprefix("sha256:") if isinstance(value, str) else value


class ReleaseRead(ReadModel):
    """One version running in one environment (seed get-version lifecycle fields)."""

    id: str
    version_id: str
    deployment_id: str
    environment: str
    status: ReleaseStatus
    replicas: int
    deployed_at: Timestamp | None
    retired_at: Timestamp | None
    rolled_back_at: Timestamp | None = Field(description="When this release was rolled back FROM")
    last_rollback_at: Timestamp | None = Field(
        description="When this version was last rolled back TO"
    )
    rollback_count: int
    failure_reason: str | None
    failure_diagnostics: dict[str, Any] | None
    image_url: str | None
    image_expires_at: Timestamp | None
    job_id: str | None
    rollout: dict[str, Any]
    config_version: int | None = Field(
        default=None,
        description="The environment's config version the release runs with (null: no config)",
    )
    created_at: Timestamp
    updated_at: Timestamp | None


class Lifecycle(BaseModel):
    """The release fields of one environment, shown at the top level of a version."""

    environment: str
    status: ReleaseStatus | None = Field(
        description="Lifecycle status in `environment`. Never released there: FAILED if "
        "the build failed (failure_reason says why), else null (no release to describe)"
    )
    replicas: int = 0
    deployed_at: Timestamp | None = None
    retired_at: Timestamp | None = None
    rolled_back_at: Timestamp | None = None
    last_rollback_at: Timestamp | None = None
    rollback_count: int = 0
    failure_reason: str | None = None
    failure_diagnostics: dict[str, Any] | None = None
    image_url: str | None = None
    image_expires_at: Timestamp | None = None
    updated_at: Timestamp | None = None


class Provenance(BaseModel):
    """Where the source came from (seed get-version fields)."""

    git_branch: str
    git_hash: str
    git_message: str = ""
    is_dirty: bool = False
    author_name: str
    author_email: str
    branch_id: str
    source_filesystem_id: str | None
    acp_type: Literal["sync", "async"] | None = None
    sdk_type: Literal["claude_agent_sdk", "codex_agent_sdk"] | None = None


class VersionFull(VersionSummary, Lifecycle, Provenance):
    """``GET /deployments/{id}/versions/{version_id}``: the full row."""

    model_config = ConfigDict(from_attributes=True)

    artifact_manifest: dict[str, Any] | None
    runtime_image: str | None
    runtime_command: str | None
    runtime_port: int | None
    health_check_path: str | None
    build_log_uri: str | None
    pinned: bool = Field(
        default=False, description="Image kept for rollback past the retention window"
    )
    build_failure_reason: str | None = Field(
        default=None, description="Why the build failed (version state `failed`)"
    )
    build_failure_diagnostics: dict[str, Any] | None = None
    releases: list[ReleaseRead] = Field(default_factory=list)


class VersionLifecycle(Lifecycle, Provenance):
    """``GET /versions/{version_id}``: the seed get-version shape."""

    id: str
    deployment_id: str
    version_number: int
    state: VersionState
    created_at: Timestamp | None
    image_url: str | None = None
    releases: list[ReleaseRead] = Field(default_factory=list)
