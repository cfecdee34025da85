"""Per-environment policy: default rollout strategy, health monitoring, auto-rollback, auto-promote.

Stored as ``environments.policy`` (JSON, ``null`` = every default). One pydantic
model validates what ``PUT …/environments/{name}/policy`` accepts and reads what
the relay's monitor and auto-promote scan use (see docs/policies.md).
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shipway.deployments.schemas import ENV_NAME_PATTERN
from shipway.deployments.strategy import Strategy

log = logging.getLogger(__name__)


class HealthMonitoring(BaseModel):
    """How the monitor probes the environment's release once it is ACTIVE."""

    model_config = ConfigDict(extra="forbid")

    interval_seconds: float = Field(
        default=10, ge=0.2, le=3600, description="Time between two probe rounds of a release"
    )
    failure_threshold: int = Field(
        default=3, ge=1, le=100, description="Failed rounds in a row before ACTIVE → UNHEALTHY"
    )
    success_threshold: int = Field(
        default=1, ge=1, le=100, description="Passing rounds in a row before UNHEALTHY → ACTIVE"
    )
    timeout_seconds: float = Field(
        default=2, gt=0, le=10, description="Timeout of one probe (HTTP GET health_check_path)"
    )


class AutoPromote(BaseModel):
    """Promote a version from this environment to another once it has been healthy long enough."""

    model_config = ConfigDict(extra="forbid")

    to_environment: str = Field(pattern=ENV_NAME_PATTERN, min_length=1, max_length=63)
    after_healthy_seconds: float = Field(
        default=600,
        ge=0,
        le=30 * 86_400,
        description="How long the version must have been ACTIVE (and not failing) here",
    )
    strategy: Strategy | None = Field(
        default=None, description="Rollout strategy; null: the target environment's default"
    )


class HttpsPolicy(BaseModel):
    """How the environment's hostnames use their certificates."""

    model_config = ConfigDict(extra="forbid")

    redirect: bool = Field(
        default=True,
        description="Redirect plain HTTP to HTTPS (308) for hostnames that have a certificate",
    )
    hsts: bool = Field(
        default=False,
        description="Send Strict-Transport-Security (one year) over HTTPS; browsers then refuse "
        "plain HTTP to the hostname for that long: turn on once HTTPS works",
    )


class EnvironmentPolicy(BaseModel):
    """Body of ``PUT /deployments/{id}/environments/{name}/policy`` (a full replace)."""

    model_config = ConfigDict(extra="forbid")

    strategy: Strategy | None = Field(
        default=None,
        description="Default rollout strategy of promotes to this environment; null: all at once",
    )
    health: HealthMonitoring = Field(default_factory=HealthMonitoring)
    auto_rollback_on_unhealthy: bool = Field(
        default=False,
        description="Roll back to the previous retained version when the release turns UNHEALTHY",
    )
    auto_promote: AutoPromote | None = None
    https: HttpsPolicy = Field(default_factory=HttpsPolicy)


class PolicyRead(BaseModel):
    """An environment's policy (every default filled in)."""

    deployment_id: str
    environment: str
    policy: EnvironmentPolicy


def parse_policy(raw: dict[str, Any] | None) -> EnvironmentPolicy:
    """The stored policy with its defaults; an unreadable one counts as the defaults (logged)."""
    if not raw:
        return EnvironmentPolicy()
    try:
        return EnvironmentPolicy.model_validate(raw)
    except ValidationError as error:
        log.warning("ignoring an invalid stored environment policy: %s", error)
        return EnvironmentPolicy()


def dump_policy(policy: EnvironmentPolicy) -> dict[str, Any]:
    """JSON to store (defaults included, so the stored row says what applies)."""
    return policy.model_dump(mode="json")
