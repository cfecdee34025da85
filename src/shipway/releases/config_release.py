"""A config change is a release: the active version again, with the new config, no rebuild."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from shipway.catalog.models import Version
from shipway.config_vars import service as config_vars
from shipway.config_vars.models import ConfigVersion
from shipway.config_vars.service import ConfigChange
from shipway.deployments.service import ensure_environment, get_deployment
from shipway.releases.service import (
    PromoteResult,
    active_release,
    default_strategy,
    queue_rollout,
)


@dataclass(frozen=True)
class ConfigOutcome:
    """The environment's config after a change, and the release rolling it out (if any)."""

    config: ConfigVersion | None
    changed: bool
    rollout: PromoteResult | None


def change_config(
    session: Session,
    *,
    workspace_id: str,
    deployment_id: str,
    environment: str,
    change: ConfigChange,
    actor: str,
) -> ConfigOutcome:
    """Record the change as a new config version; when the environment serves a release, queue
    a release of the same version with it through the normal rollout (the environment
    policy's strategy: health check, switch, canary). Nothing changed: no version, no release.
    """
    deployment = get_deployment(session, deployment_id=deployment_id, workspace_id=workspace_id)
    row = config_vars.apply_change(
        session, deployment=deployment, environment=environment, change=change, actor=actor
    )
    if row is None:
        current = config_vars.latest(session, deployment_id=deployment_id, environment=environment)
        return ConfigOutcome(config=current, changed=False, rollout=None)
    serving = active_release(session, deployment_id=deployment_id, environment=environment)
    if serving is None:
        return ConfigOutcome(config=row, changed=True, rollout=None)
    version = session.get(Version, serving.version_id)
    assert version is not None
    env = ensure_environment(session, deployment=deployment, name=environment)
    rollout = queue_rollout(
        session,
        version=version,
        environment=environment,
        kind="promote",
        strategy=default_strategy(env),
        actor=actor,
        config_version=row.number,
    )
    return ConfigOutcome(config=row, changed=True, rollout=rollout)
