"""Deployment request and response models."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.json_schema import SkipJsonSchema

from shipway.schemas import ReadModel, Timestamp

ENV_NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"


class Resources(BaseModel):
    """Limits of each replica container."""

    model_config = ConfigDict(extra="forbid")

    memory_mb: int | None = Field(
        default=None, ge=1, le=1_048_576, description="Default: SHIPWAY_REPLICA_MEMORY_MB"
    )
    cpus: float | None = Field(
        default=None, gt=0, le=256, description="Default: SHIPWAY_REPLICA_CPUS"
    )
    pids_limit: int | None = Field(
        default=None, ge=16, le=1_000_000, description="Default: SHIPWAY_REPLICA_PIDS_LIMIT"
    )


class HealthSettings(BaseModel):
    """How new replicas are judged healthy before traffic moves to them."""

    model_config = ConfigDict(extra="forbid")

    grace_period_seconds: float = Field(default=0.0, ge=0, le=600)
    interval_seconds: float = Field(default=0.5, gt=0, le=60)
    timeout_seconds: float = Field(default=2.0, gt=0, le=60)
    healthy_threshold: int = Field(default=1, ge=1, le=20)
    unhealthy_threshold: int = Field(default=3, ge=1, le=20)
    deadline_seconds: float = Field(default=60.0, gt=0, le=3600)


# A Swarm placement constraint: node id/hostname/role/platform or a node/engine label.
PLACEMENT_PATTERN = (
    r"^(node\.(id|hostname|role|platform\.os|platform\.arch|labels\.[A-Za-z0-9._-]+)"
    r"|engine\.labels\.[A-Za-z0-9._-]+) ?(==|!=) ?[A-Za-z0-9._-]+$"
)
Placement = Annotated[
    list[Annotated[str, Field(pattern=PLACEMENT_PATTERN, max_length=200)]],
    Field(
        max_length=10,
        description='Where replicas may run on a cluster, e.g. ["node.labels.zone==a"] (Swarm '
        "placement constraints, all must hold); one Docker engine ignores them",
    ),
]


HARDENED = (
    "Replicas run hardened (no-new-privileges, dropped capabilities, static sites as nobody on "
    "a read-only root; docs/security.md); false: the image's defaults, for an app that needs "
    "root's capabilities or a writable root filesystem"
)


class DeploymentCreate(BaseModel):
    """Body of ``POST /deployments``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    kind: Literal["static", "container"]
    project_id: str | None = Field(default=None, description="Default: the workspace's project")
    runtime_command: str | None = Field(default=None, max_length=2000)
    runtime_port: int = Field(default=8080, ge=1, le=65535)
    health_check_path: str = Field(default="/", max_length=500, pattern=r"^/")
    replicas: int = Field(default=1, ge=1, le=50)
    resources: Resources = Field(default_factory=lambda: Resources())
    environments: list[str] = Field(
        default_factory=lambda: ["production"], min_length=1, max_length=20
    )
    health: HealthSettings = Field(default_factory=HealthSettings)
    placement: Placement = Field(default_factory=list)
    hardened: bool = Field(default=True, description=HARDENED)


class DeploymentUpdate(BaseModel):
    """Body of ``PATCH /deployments/{id}``: runtime settings, applied by the next rollout.

    Absent fields keep their value; ``health`` fields are merged into the current
    health settings; ``resources`` replaces the current limits;
    ``runtime_command: null`` clears the command.
    """

    model_config = ConfigDict(extra="forbid")

    runtime_command: str | None = Field(default=None, max_length=2000)
    # ``SkipJsonSchema[None]``: absent is allowed, null is not (and the schema says so).
    runtime_port: Annotated[int, Field(ge=1, le=65535)] | SkipJsonSchema[None] = None
    health_check_path: (
        Annotated[str, Field(max_length=500, pattern=r"^/")] | SkipJsonSchema[None]
    ) = None
    replicas: Annotated[int, Field(ge=1, le=50)] | SkipJsonSchema[None] = None
    resources: Resources | SkipJsonSchema[None] = None
    health: (
        Annotated[dict[str, Any], Field(description="Fields of HealthSettings to change")]
        | SkipJsonSchema[None]
    ) = None
    placement: Placement | SkipJsonSchema[None] = None
    hardened: Annotated[bool, Field(description=HARDENED)] | SkipJsonSchema[None] = None

    @field_validator("health")
    @classmethod
    def _health_fields_valid(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            HealthSettings.model_validate(value)  # same limits as at creation
        return value

    @model_validator(mode="after")
    def _no_null_settings(self) -> DeploymentUpdate:
        for name in self.model_fields_set - {"runtime_command"}:
            if getattr(self, name) is None:
                raise ValueError(f"{name} cannot be null")
        return self


class EnvironmentRead(BaseModel):
    """One environment of a deployment with its active version and release."""

    name: str
    active_version_id: str | None
    active_version_number: int | None
    release_id: str | None
    status: str | None
    replicas: int
    public_url: str | None = Field(
        description="Router address: https://<hostname> once a hostname of the environment has "
        "a certificate, else route_url (null until a router serves it)"
    )
    route_url: str | None = Field(
        default=None,
        description="The environment's own port on the router (plain HTTP, no Host needed)",
    )
    policy: dict[str, Any] = Field(
        default_factory=dict,
        description="The environment's policy, defaults filled in (see docs/policies.md)",
    )


class DeploymentRead(ReadModel):
    """A deployment and its settings."""

    id: str
    name: str
    kind: str
    workspace_id: str
    project_id: str
    runtime_command: str | None
    runtime_port: int
    health_check_path: str
    replicas: int
    resources: dict[str, Any]
    settings: dict[str, Any] = Field(description="Health policy and other per-deployment settings")
    latest_version_number: int
    created_at: Timestamp
    updated_at: Timestamp
    environments: list[EnvironmentRead] = Field(default_factory=list)
