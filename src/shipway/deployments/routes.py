"""HTTP routes of deployments: thin wrappers over the service."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query
from sqlalchemy.orm import Session

from shipway.auth.deps import get_session, reader, writer
from shipway.auth.service import Principal
from shipway.deployments import service
from shipway.deployments.models import Deployment
from shipway.deployments.schemas import DeploymentCreate, DeploymentRead
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
