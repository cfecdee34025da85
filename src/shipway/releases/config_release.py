"""A config change is a release: the active version again, with the new config, no rebuild."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from shipway.catalog.models import Version
from shipway.config_vars import service as config_vars
from shipway.config_vars.models import ConfigVersion
from shipway.config_vars.service import ConfigChange
from shipway.deployments.service import ensure_environment, get_deployment
from shipway.jobs.context import JobContext
from shipway.releases.activation import load_rollout
from shipway.releases.service import (
    PromoteResult,
    active_release,
    default_strategy,
    queue_rollout,
)
from shipway.states import record_event


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
        config_release=True,
    )
    return ConfigOutcome(config=row, changed=True, rollout=rollout)


def settle_config(ctx: JobContext) -> None:
    """Fix, as the first attempt of a rollout starts, the config its release runs with.

    Rollouts of one environment run one after another, and the config may change while
    one waits: the release runs with the environment's config as it is now (its
    ``config_version`` is updated, with an event). A config release also follows the
    version serving now: a promote that ran before it may have changed it, and the
    config change must not bring the older version back. A retried attempt keeps what
    the first one settled (its replicas may exist already, with that environment).
    """
    if ctx.attempt > 1:
        return
    with ctx.session() as session, session.begin():
        job, release, _, _ = load_rollout(session, ctx.job_id)
        where = {"deployment_id": release.deployment_id, "environment": release.environment}
        reasons = []
        serving = active_release(session, **where)
        if (
            (release.rollout or {}).get("config_release")
            and serving is not None
            and serving.version_id != release.version_id
        ):
            version = session.get(Version, serving.version_id)
            assert version is not None
            release.version_id = job.version_id = version.id
            release.image_url = version.runtime_image
            reasons.append(f"follows version {version.version_number}, now serving")
        current = config_vars.latest(session, **where)
        number = current.number if current is not None else None
        if number != release.config_version:
            release.config_version = number
            reasons.append(f"runs with config v{number}, current now")
        if reasons:
            record_event(
                session,
                workspace_id=release.workspace_id,
                subject_type="release",
                subject_id=release.id,
                from_state=release.status,
                to_state=release.status,
                reason="; ".join(reasons),
                actor=job.actor,
                deployment_id=release.deployment_id,
                job_id=job.id,
                data={"version_id": release.version_id, "config_version": number},
            )
