"""HTTP routes of deployments: thin wrappers over the service."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Path, Query
from sqlalchemy.orm import Session

from shipway.auth.deps import get_session, reader, writer
from shipway.auth.service import Principal
from shipway.catalog.models import Deployment
from shipway.deployments import service
from shipway.deployments.policy import EnvironmentPolicy, PolicyRead, parse_policy
from shipway.deployments.schemas import (
    ENV_NAME_PATTERN,
    DeploymentCreate,
    DeploymentRead,
    DeploymentUpdate,
)
from shipway.schemas import Page, error_responses

router = APIRouter(tags=["deployments"])


def _read(session: Session, deployment: Deployment) -> DeploymentRead:
    data = DeploymentRead.model_validate(deployment)
    data.environments = service.environments_of(session, deployment_id=deployment.id)
    return data


@router.post(
    "/deployments",
    status_code=201,
    response_model=DeploymentRead,
    responses=error_responses(400, 401, 403, 404, 409, 413, 422),
)
def create_deployment(
    body: DeploymentCreate,
    principal: Principal = Depends(writer),
    session: Session = Depends(get_session),
) -> DeploymentRead:
    """Create a deployment (one app or site) with its environments."""
    with session.begin():
        deployment = service.create_deployment(
            session, workspace_id=principal.workspace_id, data=body, actor=principal.actor
        )
        return _read(session, deployment)


@router.get(
    "/deployments",
    response_model=Page[DeploymentRead],
    responses=error_responses(401, 403, 422),
)
def list_deployments(
    limit: int = Query(50, ge=1, le=200),
    cursor: str | None = Query(None, description="next_cursor of the previous page"),
    principal: Principal = Depends(reader),
    session: Session = Depends(get_session),
) -> Page[DeploymentRead]:
    """Deployments of the caller's workspace."""
    with session.begin():
        rows = service.list_deployments(
            session, workspace_id=principal.workspace_id, limit=limit + 1, after_id=cursor
        )
        page = rows[:limit]
        return Page[DeploymentRead](
            data=[_read(session, d) for d in page],
            next_cursor=page[-1].id if len(rows) > limit else None,
        )


@router.get(
    "/deployments/{deployment_id}",
    response_model=DeploymentRead,
    responses=error_responses(401, 403, 404),
)
def get_deployment(
    deployment_id: str,
    principal: Principal = Depends(reader),
    session: Session = Depends(get_session),
) -> DeploymentRead:
    """A deployment with each environment's active version and release status."""
    with session.begin():
        deployment = service.get_deployment(
            session, deployment_id=deployment_id, workspace_id=principal.workspace_id
        )
        return _read(session, deployment)


@router.patch(
    "/deployments/{deployment_id}",
    response_model=DeploymentRead,
    responses=error_responses(400, 401, 403, 404, 413, 422),
)
def update_deployment(
    deployment_id: str,
    body: DeploymentUpdate,
    principal: Principal = Depends(writer),
    session: Session = Depends(get_session),
) -> DeploymentRead:
    """Change runtime settings (replicas, port, command, health check, resources).

    Running releases are untouched: the next promote or rollback uses the new settings.
    """
    with session.begin():
        deployment = service.get_deployment(
            session, deployment_id=deployment_id, workspace_id=principal.workspace_id
        )
        service.update_deployment(session, deployment=deployment, data=body, actor=principal.actor)
        return _read(session, deployment)


ENVIRONMENT = Path(pattern=ENV_NAME_PATTERN, min_length=1, max_length=63)


@router.get(
    "/deployments/{deployment_id}/environments/{environment}/policy",
    response_model=PolicyRead,
    responses=error_responses(401, 403, 404, 422),
)
def get_policy(
    deployment_id: str,
    environment: str = ENVIRONMENT,
    principal: Principal = Depends(reader),
    session: Session = Depends(get_session),
) -> PolicyRead:
    """An environment's policy: default strategy, health monitoring, auto-rollback, auto-promote."""
    with session.begin():
        deployment = service.get_deployment(
            session, deployment_id=deployment_id, workspace_id=principal.workspace_id
        )
        env = service.get_environment(session, deployment=deployment, name=environment)
        return PolicyRead(
            deployment_id=deployment.id, environment=env.name, policy=parse_policy(env.policy)
        )


@router.put(
    "/deployments/{deployment_id}/environments/{environment}/policy",
    response_model=PolicyRead,
    responses=error_responses(400, 401, 403, 404, 413, 422),
)
def put_policy(
    body: EnvironmentPolicy,
    deployment_id: str,
    environment: str = ENVIRONMENT,
    principal: Principal = Depends(writer),
    session: Session = Depends(get_session),
) -> PolicyRead:
    """Replace an environment's policy (absent fields take their defaults).

    Creates the environment if the deployment does not have it yet.
    """
    with session.begin():
        deployment = service.get_deployment(
            session, deployment_id=deployment_id, workspace_id=principal.workspace_id
        )
        env = service.set_policy(
            session, deployment=deployment, name=environment, policy=body, actor=principal.actor
        )
        return PolicyRead(
            deployment_id=deployment.id, environment=env.name, policy=parse_policy(env.policy)
        )
