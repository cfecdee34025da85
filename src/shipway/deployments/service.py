"""Deployment use cases: create, list, show with environments."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shipway.catalog.models import Deployment, Environment, Release, Version
from shipway.deployments.addresses import public_url
from shipway.deployments.policy import EnvironmentPolicy, dump_policy, parse_policy
from shipway.deployments.schemas import (
    ENV_NAME_PATTERN,
    DeploymentCreate,
    DeploymentUpdate,
    EnvironmentRead,
    HealthSettings,
)
from shipway.errors import Conflict, InvalidInput, NotFound
from shipway.ids import new_id, utcnow
from shipway.states import record_event
from shipway.workspaces.models import Project


def validate_environment_name(name: str) -> str:
    """Refuse environment names that are not DNS-label-like."""
    if not re.fullmatch(ENV_NAME_PATTERN, name):
        raise InvalidInput(
            f"invalid environment name {name!r}: lowercase letters, digits and '-', 1-63 chars",
            field="environment",
        )
    return name


def create_deployment(
    session: Session, *, workspace_id: str, data: DeploymentCreate, actor: str
) -> Deployment:
    """Create a deployment and its environments."""
    if data.project_id:
        project = session.get(Project, data.project_id)
        if project is None or project.workspace_id != workspace_id:
            raise NotFound(f"project {data.project_id} not found", project_id=data.project_id)
    else:
        project = session.scalars(
            select(Project).where(Project.workspace_id == workspace_id).order_by(Project.created_at)
        ).first()
        if project is None:
            project = Project(workspace_id=workspace_id, name="default")
            session.add(project)
            session.flush()
    now = utcnow()
    deployment = Deployment(
        id=new_id("dep"),
        workspace_id=workspace_id,
        project_id=project.id,
        name=data.name,
        kind=data.kind,
        runtime_command=data.runtime_command,
        runtime_port=data.runtime_port,
        health_check_path=data.health_check_path,
        replicas=data.replicas,
        resources=data.resources.model_dump(exclude_none=True),
        settings={
            "health": data.health.model_dump(),
            "placement": data.placement,
            "hardened": data.hardened,
        },
        latest_version_number=0,
        created_at=now,
        updated_at=now,
    )
    session.add(deployment)
    try:
        with session.begin_nested():
            session.flush()
    except IntegrityError:
        raise Conflict(
            f"a deployment named {data.name!r} already exists in this workspace",
            code="deployment_name_taken",
            name=data.name,
        ) from None
    for name in dict.fromkeys(data.environments):
        ensure_environment(session, deployment=deployment, name=validate_environment_name(name))
    record_event(
        session,
        workspace_id=workspace_id,
        subject_type="deployment",
        subject_id=deployment.id,
        from_state=None,
        to_state="created",
        reason=f"deployment {data.name} created",
        actor=actor,
        deployment_id=deployment.id,
    )
    return deployment


def ensure_environment(session: Session, *, deployment: Deployment, name: str) -> Environment:
    """The environment row called ``name``, created if missing."""
    env = session.scalars(
        select(Environment).where(
            Environment.deployment_id == deployment.id, Environment.name == name
        )
    ).first()
    if env is None:
        env = Environment(
            workspace_id=deployment.workspace_id,
            deployment_id=deployment.id,
            name=name,
            created_at=utcnow(),
            updated_at=utcnow(),
        )
        try:
            with session.begin_nested():
                session.add(env)
                session.flush()
        except IntegrityError:  # created concurrently
            env = session.scalars(
                select(Environment).where(
                    Environment.deployment_id == deployment.id, Environment.name == name
                )
            ).one()
    return env


def update_deployment(
    session: Session, *, deployment: Deployment, data: DeploymentUpdate, actor: str
) -> Deployment:
    """Change runtime settings (used by the next rollout); records what changed."""
    changes: dict[str, Any] = {}
    for name in ("runtime_command", "runtime_port", "health_check_path", "replicas"):
        if name in data.model_fields_set and getattr(deployment, name) != getattr(data, name):
            changes[name] = {"from": getattr(deployment, name), "to": getattr(data, name)}
            setattr(deployment, name, getattr(data, name))
    if "resources" in data.model_fields_set and data.resources is not None:
        resources = data.resources.model_dump(exclude_none=True)
        if resources != (deployment.resources or {}):
            changes["resources"] = {"from": deployment.resources, "to": resources}
            deployment.resources = resources
    if data.health:
        current = dict((deployment.settings or {}).get("health") or {})
        health = HealthSettings.model_validate({**current, **data.health}).model_dump()
        if health != current:
            changes["health"] = {"from": current, "to": health}
            deployment.settings = {**(deployment.settings or {}), "health": health}
    for name, default in (("placement", []), ("hardened", True)):
        wanted = getattr(data, name)
        was = (deployment.settings or {}).get(name)
        was = default if was is None else was
        if wanted is not None and wanted != was:
            changes[name] = {"from": was, "to": wanted}
            deployment.settings = {**(deployment.settings or {}), name: wanted}
    if changes:
        deployment.updated_at = utcnow()
        record_event(
            session,
            workspace_id=deployment.workspace_id,
            subject_type="deployment",
            subject_id=deployment.id,
            from_state=None,
            to_state="updated",
            reason="settings changed: " + ", ".join(sorted(changes)),
            actor=actor,
            deployment_id=deployment.id,
            data={"changes": changes},
        )
        session.flush()
    return deployment


def get_environment(session: Session, *, deployment: Deployment, name: str) -> Environment:
    """One environment of a deployment, or NotFound."""
    env = session.scalars(
        select(Environment).where(
            Environment.deployment_id == deployment.id, Environment.name == name
        )
    ).first()
    if env is None:
        raise NotFound(
            f"environment {name} of deployment {deployment.id} not found",
            deployment_id=deployment.id,
            environment=name,
        )
    return env


def set_policy(
    session: Session,
    *,
    deployment: Deployment,
    name: str,
    policy: EnvironmentPolicy,
    actor: str,
) -> Environment:
    """Replace an environment's policy (creating the environment if missing); audited."""
    validate_environment_name(name)
    if policy.auto_promote is not None and policy.auto_promote.to_environment == name:
        raise InvalidInput(
            f"auto_promote.to_environment must differ from {name}",
            field="auto_promote.to_environment",
        )
    env = ensure_environment(session, deployment=deployment, name=name)
    before = env.policy
    env.policy = dump_policy(policy)
    env.updated_at = utcnow()
    record_event(
        session,
        workspace_id=deployment.workspace_id,
        subject_type="environment",
        subject_id=str(env.id),
        from_state=None,
        to_state="policy_set",
        reason=f"policy of {name} replaced",
        actor=actor,
        deployment_id=deployment.id,
        data={"environment": name, "before": before, "after": env.policy},
    )
    session.flush()
    return env


def get_deployment(session: Session, *, deployment_id: str, workspace_id: str) -> Deployment:
    """One deployment; another workspace's is NotFound."""
    deployment = session.get(Deployment, deployment_id)
    if deployment is None or deployment.workspace_id != workspace_id:
        raise NotFound(f"deployment {deployment_id} not found", deployment_id=deployment_id)
    return deployment


def list_deployments(
    session: Session, *, workspace_id: str, limit: int, after_id: str | None
) -> Sequence[Deployment]:
    """Deployments of a workspace in id order (keyset)."""
    query = select(Deployment).where(Deployment.workspace_id == workspace_id)
    if after_id:
        query = query.where(Deployment.id > after_id)
    return session.scalars(query.order_by(Deployment.id).limit(limit)).all()


def environments_of(session: Session, *, deployment_id: str) -> list[EnvironmentRead]:
    """Each environment with its active release, version and status."""
    rows = session.execute(
        select(Environment, Release, Version)
        .outerjoin(Release, Release.id == Environment.active_release_id)
        .outerjoin(Version, Version.id == Release.version_id)
        .where(Environment.deployment_id == deployment_id)
        .order_by(Environment.name)
    ).all()
    return [
        EnvironmentRead(
            name=env.name,
            active_version_id=version.id if version else None,
            active_version_number=version.version_number if version else None,
            release_id=release.id if release else None,
            status=release.status if release else None,
            replicas=release.replicas if release else 0,
            public_url=public_url(deployment_id, env.name),
            route_url=public_url(deployment_id, env.name, own_port=True),
            policy=dump_policy(parse_policy(env.policy)),
        )
        for env, release, version in rows
    ]
