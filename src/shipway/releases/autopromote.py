"""Auto-promote: a version healthy long enough in one environment is promoted to the next.

For every environment whose policy has ``auto_promote``, the relay checks (every
``SHIPWAY_AUTO_PROMOTE_INTERVAL_SECONDS``) its ACTIVE release: once it has been
ACTIVE for ``after_healthy_seconds`` — counted from its deploy, its warm
rollback or its last recovery from UNHEALTHY, whichever is latest — and its last
probe round did not fail, an ordinary promote job of its version to
``to_environment`` is queued with actor ``policy:auto_promote:<from>-><to>``.

At most once per (version, target environment): nothing is queued when the
version already has a release or a rollout job there (promoted by hand, by an
earlier pass, or rolled back from). The check and the promote happen in one
transaction holding the target environment's row lock, so two relays cannot
both promote.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from shipway.catalog.models import Deployment, Environment, Release, Version
from shipway.deployments.policy import AutoPromote, parse_policy
from shipway.deployments.service import ensure_environment
from shipway.deployments.strategy import AllAtOnce
from shipway.errors import Conflict
from shipway.ids import utcnow
from shipway.jobs import lines
from shipway.jobs.dispatch import Queued
from shipway.jobs.periodic import periodic
from shipway.states import record_event

log = logging.getLogger(__name__)
ACTOR_PREFIX = "policy:auto_promote"


def actor_for(source: str, target: str) -> str:
    """The actor recorded on the promote job and its Events."""
    return f"{ACTOR_PREFIX}:{source}->{target}"


def healthy_since(release: Release) -> datetime | None:
    """When the release's current healthy period began."""
    moments = [
        m
        for m in (release.deployed_at, release.last_rollback_at, release.recovered_at)
        if m is not None
    ]
    return max(moments) if moments else None


def already_there(session: Session, *, version_id: str, environment: str) -> str | None:
    """Id of a release or rollout job of this version in ``environment``, if any."""
    release = session.scalar(
        select(Release.id)
        .where(Release.version_id == version_id, Release.environment == environment)
        .limit(1)
    )
    if release is not None:
        return release
    return lines.find_job_id(
        session,
        kinds=("promote", "rollback"),
        version_id=version_id,
        environment=environment,
    )


@periodic("auto-promote", interval=lambda settings: settings.auto_promote_interval_seconds)
def scan_once(
    session_maker: Callable[[], Session] | None = None, *, now: datetime | None = None
) -> list[Queued]:
    """One pass over every auto-promote policy; returns the (job id, queue) queued."""
    from shipway.db import session_factory
    from shipway.jobs.dispatch import dispatch

    maker = session_maker or session_factory()
    now = now or utcnow()
    with maker() as session:
        rows = session.execute(
            select(Environment.id, Environment.policy).where(Environment.policy.is_not(None))
        ).all()
    env_ids = [env_id for env_id, raw in rows if parse_policy(raw).auto_promote is not None]
    queued = []
    for env_id in env_ids:
        try:
            with maker() as session, session.begin():
                created = consider(session, environment_id=env_id, now=now)
        except Conflict as refusal:
            log.warning("auto promote from environment %s refused: %s", env_id, refusal.message)
            continue
        if created is not None:
            queued.append(created)
    if queued:
        dispatch(queued, session_maker=maker)
        log.info("auto promote queued %d job(s)", len(queued))
    return queued


def consider(session: Session, *, environment_id: int, now: datetime) -> Queued | None:
    """Queue the promote one environment's policy asks for now, if any."""
    from shipway.releases.service import promote_version

    env = session.get(Environment, environment_id)
    if env is None:
        return None
    rule = parse_policy(env.policy).auto_promote
    if rule is None:
        return None
    release = session.scalars(
        select(Release)
        .where(
            Release.deployment_id == env.deployment_id,
            Release.environment == env.name,
            Release.status == "ACTIVE",
        )
        .limit(1)
    ).first()
    if release is None or not _healthy_long_enough(release, rule, now):
        return None
    deployment = session.get(Deployment, env.deployment_id)
    assert deployment is not None
    target = ensure_environment(session, deployment=deployment, name=rule.to_environment)
    # Serialise with any other scanner: lock the target environment, then look again.
    session.execute(select(Environment.id).where(Environment.id == target.id).with_for_update())
    if already_there(session, version_id=release.version_id, environment=target.name):
        return None
    strategy = _strategy(rule, target)
    actor = actor_for(env.name, target.name)
    with session.begin_nested():
        result = promote_version(
            session,
            workspace_id=deployment.workspace_id,
            deployment_id=deployment.id,
            version_id=release.version_id,
            environment=target.name,
            strategy=strategy,
            actor=actor,
        )
    version = session.get(Version, release.version_id)
    started = healthy_since(release)
    healthy_for = (now - started).total_seconds() if started else None
    record_event(
        session,
        workspace_id=deployment.workspace_id,
        subject_type="release",
        subject_id=release.id,
        from_state=release.status,
        to_state=release.status,
        reason=(
            f"auto promote of version {version.version_number if version else '?'} "
            f"from {env.name} to {target.name}: healthy for {healthy_for or 0:.0f}s "
            f"(policy: {rule.after_healthy_seconds:g}s)"
        ),
        actor=actor,
        deployment_id=deployment.id,
        job_id=result.job.id,
        data={
            "from_environment": env.name,
            "to_environment": target.name,
            "version_id": release.version_id,
            "healthy_since": started.isoformat() if started else None,
            "healthy_seconds": healthy_for,
            "after_healthy_seconds": rule.after_healthy_seconds,
            "strategy": strategy,
            "promote_release_id": result.release.id,
        },
    )
    return Queued.of(result.job)


def _healthy_long_enough(release: Release, rule: AutoPromote, now: datetime) -> bool:
    started = healthy_since(release)
    if started is None or (now - started).total_seconds() < rule.after_healthy_seconds:
        return False
    # A release whose latest probe round failed is on its way to UNHEALTHY: not healthy.
    return int((release.health or {}).get("consecutive_failures", 0)) == 0


def _strategy(rule: AutoPromote, target: Environment) -> dict[str, Any]:
    chosen = rule.strategy or parse_policy(target.policy).strategy or AllAtOnce()
    return chosen.model_dump(mode="json")
