"""HTTP routes of domains: thin wrappers over the service."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from sqlalchemy.orm import Session

from shipway.auth.deps import get_session, reader, writer
from shipway.auth.service import Principal
from shipway.config import get_settings
from shipway.deployments.routes import ENVIRONMENT
from shipway.deployments.service import get_deployment
from shipway.domains import service
from shipway.domains.models import Domain
from shipway.domains.schemas import DomainCreate, DomainList, DomainRead
from shipway.schemas import error_responses

router = APIRouter(tags=["domains"])
PATH = "/deployments/{deployment_id}/environments/{environment}/domains"


def _read(domain: Domain, environment: str) -> DomainRead:
    return DomainRead.model_validate(
        {**{c: getattr(domain, c) for c in DomainRead.model_fields if c != "environment"},
         "environment": environment}
    )  # fmt: skip


@router.get(PATH, response_model=DomainList, responses=error_responses(401, 403, 404, 422))
def list_domains(
    deployment_id: str,
    environment: str = ENVIRONMENT,
    principal: Principal = Depends(reader),
    session: Session = Depends(get_session),
) -> DomainList:
    """The environment's hostnames: its generated one under the apps domain, then custom ones."""
    with session.begin():
        deployment = get_deployment(
            session, deployment_id=deployment_id, workspace_id=principal.workspace_id
        )
        rows = service.domains_of(
            session,
            deployment=deployment,
            environment=environment,
            apps_domain=get_settings().apps_domain,
        )
        return DomainList(data=[_read(row, environment) for row in rows])


@router.post(
    PATH,
    status_code=201,
    response_model=DomainRead,
    responses=error_responses(401, 403, 404, 409, 413, 422),
)
def add_domain(
    body: DomainCreate,
    deployment_id: str,
    environment: str = ENVIRONMENT,
    principal: Principal = Depends(writer),
    session: Session = Depends(get_session),
) -> DomainRead:
    """Route a custom domain to the environment (409 if any environment has it already)."""
    with session.begin():
        deployment = get_deployment(
            session, deployment_id=deployment_id, workspace_id=principal.workspace_id
        )
        domain = service.add_domain(
            session,
            deployment=deployment,
            environment=environment,
            hostname=body.hostname,
            actor=principal.actor,
            apps_domain=get_settings().apps_domain,
        )
        return _read(domain, environment)


@router.delete(
    PATH + "/{hostname}",
    response_model=DomainRead,
    responses=error_responses(401, 403, 404, 409, 422),
)
def remove_domain(
    deployment_id: str,
    hostname: str,
    environment: str = ENVIRONMENT,
    principal: Principal = Depends(writer),
    session: Session = Depends(get_session),
) -> DomainRead:
    """Stop routing a custom domain; answers what was removed (the generated hostname: 409)."""
    with session.begin():
        deployment = get_deployment(
            session, deployment_id=deployment_id, workspace_id=principal.workspace_id
        )
        removed = service.remove_domain(
            session,
            deployment=deployment,
            environment=environment,
            hostname=hostname,
            actor=principal.actor,
        )
        return _read(removed, environment)
