"""Request and answer bodies of promote and rollback."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from shipway.config_vars.schemas import ConfigPatch
from shipway.deployments.schemas import ENV_NAME_PATTERN
from shipway.deployments.strategy import Strategy
from shipway.jobs.schemas import JobRead
from shipway.versions.schemas import ReleaseRead


class PromoteRequest(BaseModel):
    """Body of promote: the environment and an optional strategy."""

    model_config = ConfigDict(extra="forbid")

    environment: str = Field(
        default="production", pattern=ENV_NAME_PATTERN, min_length=1, max_length=63
    )
    strategy: Strategy | None = Field(
        default=None,
        description=(
            'Rollout strategy: {"type": "all_at_once"} or {"type": "canary", "steps": [...], '
            '"analysis": {...}} (docs/canary.md); null: the environment policy\'s default, '
            "else all at once"
        ),
    )
    supersede: bool = Field(
        default=False,
        description="Cancel rollouts still queued for this environment (newest wins)",
    )
    config: ConfigPatch | None = Field(
        default=None,
        description="Config changes made with the promote, atomically (the release runs "
        "with them; bad names or values refuse the whole promote)",
    )


class PromoteResponse(BaseModel):
    """202 answer of promote: the release being deployed and its job."""

    release: ReleaseRead
    job: JobRead


class RollbackRequest(BaseModel):
    """Body of rollback."""

    model_config = ConfigDict(extra="forbid")

    environment: str = Field(
        default="production", pattern=ENV_NAME_PATTERN, min_length=1, max_length=63
    )
    to_version_id: str | None = Field(
        default=None,
        max_length=40,
        description="Default: the most recent archived version still retained here",
    )
