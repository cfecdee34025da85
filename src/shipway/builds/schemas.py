"""Publish request metadata and response."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shipway.deployments.schemas import ENV_NAME_PATTERN
from shipway.jobs.schemas import JobRead
from shipway.versions.schemas import VersionFull


class PublishForm(BaseModel):
    """Form fields sent beside the ``source`` archive."""

    # "allow" because FastAPI hands the file field to the form model too; any other
    # unknown field is refused by the validator below.
    model_config = ConfigDict(extra="allow")

    git_branch: str = Field(default="", max_length=255)
    git_hash: str = Field(default="", max_length=64)
    git_message: str = Field(default="", max_length=10_000)
    is_dirty: bool = False
    author_name: str = Field(default="", max_length=255)
    author_email: str = Field(default="", max_length=255)
    branch_id: str = Field(default="", max_length=255)
    external_user_id: str | None = Field(default=None, max_length=200)
    source_filesystem_id: str | None = Field(default=None, max_length=255)
    acp_type: Literal["sync", "async"] | None = None
    sdk_type: Literal["claude_agent_sdk", "codex_agent_sdk"] | None = None
    runtime_command: str | None = Field(default=None, max_length=2000)
    runtime_port: int | None = Field(default=None, ge=1, le=65535)
    health_check_path: str | None = Field(default=None, max_length=500, pattern=r"^/")
    promote_to: str | None = Field(
        default=None,
        pattern=ENV_NAME_PATTERN,
        description="Environment to promote to once the build is ready",
    )

    @model_validator(mode="after")
    def _no_unknown_fields(self) -> PublishForm:
        unknown = sorted(set(self.model_extra or {}) - {"source"})
        if unknown:
            raise ValueError(f"unknown form fields: {', '.join(unknown)}")
        return self

    def provenance(self) -> dict[str, object]:
        """The git/provenance columns of the version."""
        return self.model_dump(
            include={
                "git_branch",
                "git_hash",
                "git_message",
                "is_dirty",
                "author_name",
                "author_email",
                "branch_id",
                "source_filesystem_id",
                "acp_type",
                "sdk_type",
            }
        )

    def runtime(self) -> dict[str, object]:
        """Runtime overrides given with this publish."""
        return {
            key: value
            for key, value in self.model_dump(
                include={"runtime_command", "runtime_port", "health_check_path"}
            ).items()
            if value is not None
        }


class PublishResponse(BaseModel):
    """202 answer of publish: the new version (``created``) and its build job."""

    version: VersionFull
    job: JobRead
