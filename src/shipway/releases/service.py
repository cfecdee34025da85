"""Promote: validate, create the DEPLOYING release and its rollout job in one transaction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from shipway.catalog.models import Deployment, Environment, Release, Version
from shipway.config_vars import service as config_vars
from shipway.config_vars.service import ConfigChange
from shipway.deployments.service import (
    ensure_environment,
    get_deployment,
    validate_environment_name,
)
from shipway.deployments.strategy import parse_strategy
from shipway.errors import Conflict, InvalidInput, InvalidTransition, NotFound
from shipway.ids import new_id, utcnow
from shipway.jobs import lines, queueing
from shipway.jobs.models import Job
from shipway.states import record_event
from shipway.versions.service import get_version

PROMOTABLE_STATES = ("ready", "archived")
LIVE_STATUSES = ("ACTIVE", "UNHEALTHY")


@dataclass(frozen=True)
class PromoteResult:
    """The release being deployed and the job deploying it."""

    release: Release
    job: Job


def active_release(session: Session, *, deployment_id: str, environment: str) -> Release | None:
    """The release serving ``environment`` now (ACTIVE or UNHEALTHY), if any."""
    return session.scalars(
        select(Release)
        .where(
            Release.deployment_id == deployment_id,
            Release.environment == environment,
            Release.status.in_(LIVE_STATUSES),
        )
        .order_by(Release.created_at.desc())
    ).first()


def promote_version(
    session: Session,
    *,
    workspace_id: str,
    deployment_id: str,
    version_id: str,
    environment: str,
    strategy: dict[str, Any] | None,
    actor: str,
    supersede: bool = False,
    config: ConfigChange | None = None,
) -> PromoteResult:
    """Queue a rollout of ``version_id`` to ``environment`` (rollback if it is archived).

    With ``supersede`` the rollouts still queued for that environment are
    cancelled (``superseded``): the newest request wins, the running one finishes.
    ``config`` changes the environment's config in the same transaction; the release
    runs with it (so promoting the active version with a config change is allowed).
    A rollback runs with the config the version last ran with here, made current again.
    """
    deployment = get_deployment(session, deployment_id=deployment_id, workspace_id=workspace_id)
    version = get_version(
        session, version_id=version_id, workspace_id=workspace_id, deployment_id=deployment_id
    )
    validate_environment_name(environment)
    if version.state not in PROMOTABLE_STATES:
        raise Conflict(
            f"version {version.version_number} is {version.state}; only ready or archived "
            "versions can be promoted",
            code="version_not_promotable",
            state=version.state,
            promotable_states=list(PROMOTABLE_STATES),
        )
    changed = config is not None and (
        config_vars.apply_change(
            session, deployment=deployment, environment=environment, change=config, actor=actor
        )
        is not None
    )
    current = active_release(session, deployment_id=deployment_id, environment=environment)
    already = current is not None and current.version_id == version_id
    if already and not changed and current is not None and current.status == "ACTIVE":
        raise Conflict(
            f"version {version.version_number} is already active in {environment}",
            code="version_already_active",
            release_id=current.id,
        )
    env = ensure_environment(session, deployment=deployment, name=environment)
    if strategy is None:
        strategy = default_strategy(env)
    if supersede:
        supersede_queued(
            session,
            serial_key=lines.serial_key_for(deployment_id, environment),
            actor=actor,
            by_version=version.version_number,
        )
    # the active version again (with a config change) is a new release, never a rollback
    kind = "rollback" if version.state == "archived" and not already else "promote"
    config_version = _config_for(
        session,
        deployment=deployment,
        version=version,
        environment=environment,
        kind=kind,
        actor=actor,
    )
    return queue_rollout(
        session,
        version=version,
        environment=environment,
        kind=kind,
        strategy=strategy,
        actor=actor,
        config_version=config_version,
    )


def _config_for(
    session: Session,
    *,
    deployment: Deployment,
    version: Version,
    environment: str,
    kind: str,
    actor: str,
) -> int | None:
    """The config version a new release runs with: the current one; for a rollback the one
    the version last ran with here, made current again (a new version with its vars)."""
    if kind == "rollback":
        last = _latest_release(session, version_id=version.id, environment=environment)
        if last is not None and last.config_version is not None:
            restored = config_vars.restore(
                session,
                deployment=deployment,
                environment=environment,
                number=last.config_version,
                actor=actor,
            )
            return restored.number if restored is not None else last.config_version
    current = config_vars.latest(session, deployment_id=deployment.id, environment=environment)
    return current.number if current is not None else None


def default_strategy(env: Environment) -> dict[str, Any]:
    """The environment policy's strategy (validated), else all at once."""
    raw = (env.policy or {}).get("strategy")
    try:
        return parse_strategy(raw).model_dump(mode="json")
    except ValidationError as error:
        raise InvalidInput(
            f"the default strategy of environment {env.name} is invalid; fix its policy "
            "or pass a strategy",
            field="strategy",
            errors=[e["msg"] for e in error.errors()],
        ) from None


def queue_rollout(
    session: Session,
    *,
    version: Version,
    environment: str,
    kind: str,
    strategy: dict[str, Any],
    actor: str,
    config_version: int | None,
    config_release: bool = False,
) -> PromoteResult:
    """A DEPLOYING release of ``version`` with config ``config_version`` and its rollout job
    (a rollback to a DRAINING release switches back to it: no new release). A
    ``config_release`` redeploys whatever version serves when it runs (see
    ``config_release.settle_config``)."""
    if kind == "rollback":
        warm = _warm_release(session, version_id=version.id, environment=environment)
        if warm is not None:
            return _queue_job(
                session, release=warm, version=version, kind=kind, strategy=strategy, actor=actor
            )
    now = utcnow()
    release = Release(
        id=new_id("rel"),
        workspace_id=version.workspace_id,
        deployment_id=version.deployment_id,
        version_id=version.id,
        environment=environment,
        status="DEPLOYING",
        replicas=0,
        rollback_count=0,
        image_url=version.runtime_image,
        config_version=config_version,
        rollout={"strategy": strategy, **({"config_release": True} if config_release else {})},
        created_at=now,
        updated_at=now,
    )
    session.add(release)
    session.flush()
    queued = _queue_job(
        session, release=release, version=version, kind=kind, strategy=strategy, actor=actor
    )
    record_event(
        session,
        workspace_id=version.workspace_id,
        subject_type="release",
        subject_id=release.id,
        from_state=None,
        to_state="DEPLOYING",
        reason=f"{kind} of version {version.version_number} to {environment} queued"
        + (f" (config v{config_version})" if config_version is not None else ""),
        actor=actor,
        deployment_id=version.deployment_id,
        job_id=queued.job.id,
    )
    return queued


def _latest_release(session: Session, *, version_id: str, environment: str) -> Release | None:
    """The version's latest release in ``environment``."""
    return session.scalars(
        select(Release)
        .where(Release.version_id == version_id, Release.environment == environment)
        .order_by(Release.created_at.desc())
        .limit(1)
    ).first()


def _warm_release(session: Session, *, version_id: str, environment: str) -> Release | None:
    """The version's latest release in ``environment`` if it is DRAINING (replicas warm)."""
    latest = _latest_release(session, version_id=version_id, environment=environment)
    return latest if latest is not None and latest.status == "DRAINING" else None


def _queue_job(
    session: Session,
    *,
    release: Release,
    version: Version,
    kind: str,
    strategy: dict[str, Any],
    actor: str,
) -> PromoteResult:
    environment = release.environment
    job = queueing.enqueue(
        session,
        workspace_id=version.workspace_id,
        kind=kind,
        actor=actor,
        params={"strategy": strategy},
        deployment_id=version.deployment_id,
        environment=environment,
        version_id=version.id,
        release_id=release.id,
        serial_key=lines.serial_key_for(version.deployment_id, environment),
    )
    release.job_id = job.id
    session.flush()
    return PromoteResult(release=release, job=job)


def rollback_target(
    session: Session, *, deployment_id: str, environment: str, to_version_id: str | None
) -> Version:
    """The version to roll back to: the given one, or the latest retained one that served here."""
    if to_version_id is not None:
        version = session.get(Version, to_version_id)
        if version is None or version.deployment_id != deployment_id:
            raise NotFound(f"version {to_version_id} not found", version_id=to_version_id)
        return version
    current = active_release(session, deployment_id=deployment_id, environment=environment)
    now = utcnow()
    candidates = session.execute(
        select(Version, Release)
        .join(Release, Release.version_id == Version.id)
        .where(
            Version.deployment_id == deployment_id,
            Version.state == "archived",
            Release.environment == environment,
            Release.deployed_at.is_not(None),
            Release.status.in_(("DRAINING", "RETIRED", "ROLLED_BACK")),
        )
        .order_by(Release.deployed_at.desc())
        .limit(20)
    ).all()
    for version, release in candidates:
        if current is not None and version.id == current.version_id:
            continue
        if release.image_expires_at is None or release.image_expires_at > now:
            return version
    raise Conflict(
        f"no earlier version of this deployment is retained for rollback in {environment}",
        code="no_rollback_target",
        environment=environment,
    )


def rollback(
    session: Session,
    *,
    workspace_id: str,
    deployment_id: str,
    environment: str,
    to_version_id: str | None,
    actor: str,
) -> PromoteResult:
    """Queue a rollback of ``environment`` to an archived version's retained image."""
    get_deployment(session, deployment_id=deployment_id, workspace_id=workspace_id)
    target = rollback_target(
        session, deployment_id=deployment_id, environment=environment, to_version_id=to_version_id
    )
    if target.state != "archived":
        raise Conflict(
            f"version {target.version_number} is {target.state}; rollback needs an archived "
            "version (promote a ready one instead)",
            code="version_not_rollbackable",
            state=target.state,
        )
    return promote_version(
        session,
        workspace_id=workspace_id,
        deployment_id=deployment_id,
        version_id=target.id,
        environment=environment,
        strategy={"type": "all_at_once"},
        actor=actor,
    )


def supersede_queued(session: Session, *, serial_key: str, actor: str, by_version: int) -> int:
    """Cancel the queued (not running) rollouts of one environment; returns how many."""
    from shipway.jobs import handlers
    from shipway.jobs.machine import JOB
    from shipway.states import transition

    waiting = lines.queued_in_line(session, serial_key=serial_key, kinds=("promote", "rollback"))
    diagnostics = {
        "title": "Superseded",
        "description": f"A newer rollout (version {by_version}) replaced this queued one.",
        "action": "Nothing to do; promote this version again if it is still wanted.",
        "evidence": {"superseded_by_version": by_version, "actor": actor},
    }
    cancelled = 0
    for job in waiting:
        try:
            transition(
                session,
                JOB,
                subject_id=job.id,
                from_state="queued",
                to_state="cancelled",
                reason="superseded",
                actor=actor,
                values={
                    "finished_at": utcnow(),
                    "failure_reason": "superseded",
                    "failure_diagnostics": diagnostics,
                },
            )
        except InvalidTransition:  # a worker claimed it meanwhile: it runs, as running ones do
            continue
        handlers.compensate(session, job, "superseded", diagnostics)
        cancelled += 1
    return cancelled
