"""HTTP routes of domains and their certificates: thin wrappers over the services."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from sqlalchemy.orm import Session

from shipway.auth.deps import get_session, reader, writer
from shipway.auth.service import Principal
from shipway.catalog.models import Deployment
from shipway.config import get_settings
from shipway.deployments.routes import ENVIRONMENT
from shipway.deployments.service import get_deployment, get_environment
from shipway.domains import service, tls
from shipway.domains.models import Certificate, Domain
from shipway.domains.schemas import (
    CertificateRead,
    CertificateUpload,
    DomainCreate,
    DomainList,
    DomainRead,
)
from shipway.schemas import error_responses

router = APIRouter(tags=["domains"])
PATH = "/deployments/{deployment_id}/environments/{environment}/domains"
ONE = PATH + "/{hostname}"


def _read(domain: Domain, environment: str, certificate: Certificate | None) -> DomainRead:
    fields = {name: getattr(domain, name) for name in ("hostname", "kind", "deployment_id")}
    return DomainRead(
        **fields,
        environment=environment,
        created_by=domain.created_by,
        created_at=domain.created_at,
        certificate=CertificateRead.model_validate(certificate) if certificate else None,
    )


def _deployment(session: Session, principal: Principal, deployment_id: str) -> Deployment:
    return get_deployment(session, deployment_id=deployment_id, workspace_id=principal.workspace_id)


def _domain(
    session: Session, principal: Principal, deployment_id: str, environment: str, hostname: str
) -> Domain:
    deployment = _deployment(session, principal, deployment_id)
    env = get_environment(session, deployment=deployment, name=environment)
    return service.find_domain(session, deployment=deployment, environment=env, hostname=hostname)


@router.get(PATH, response_model=DomainList, responses=error_responses(401, 403, 404, 422))
def list_domains(
    deployment_id: str,
    environment: str = ENVIRONMENT,
    principal: Principal = Depends(reader),
    session: Session = Depends(get_session),
) -> DomainList:
    """The environment's hostnames (its generated one first) and their certificates."""
    settings = get_settings()
    with session.begin():
        deployment = _deployment(session, principal, deployment_id)
        rows = service.domains_of(
            session,
            deployment=deployment,
            environment=environment,
            apps_domain=settings.apps_domain,
            acme=bool(settings.acme_directory_url),
        )
        found = service.certificates_of(session, rows)
        return DomainList(data=[_read(row, environment, found.get(row.hostname)) for row in rows])


@router.post(
    PATH,
    status_code=201,
    response_model=DomainRead,
    responses=error_responses(400, 401, 403, 404, 409, 413, 422),
)
def add_domain(
    body: DomainCreate,
    deployment_id: str,
    environment: str = ENVIRONMENT,
    principal: Principal = Depends(writer),
    session: Session = Depends(get_session),
) -> DomainRead:
    """Route a custom domain to the environment (409 if any environment has it already);
    with ACME configured its certificate is issued right after."""
    settings = get_settings()
    with session.begin():
        deployment = _deployment(session, principal, deployment_id)
        domain = service.add_domain(
            session,
            deployment=deployment,
            environment=environment,
            hostname=body.hostname,
            actor=principal.actor,
            apps_domain=settings.apps_domain,
            acme=bool(settings.acme_directory_url),
        )
        return _read(domain, environment, session.get(Certificate, domain.hostname))


@router.delete(ONE, response_model=DomainRead, responses=error_responses(401, 403, 404, 409, 422))
def remove_domain(
    deployment_id: str,
    hostname: str,
    environment: str = ENVIRONMENT,
    principal: Principal = Depends(writer),
    session: Session = Depends(get_session),
) -> DomainRead:
    """Stop routing a custom domain; answers what was removed (the generated hostname: 409)."""
    with session.begin():
        deployment = _deployment(session, principal, deployment_id)
        removed = service.remove_domain(
            session,
            deployment=deployment,
            environment=environment,
            hostname=hostname,
            actor=principal.actor,
        )
        return _read(removed, environment, None)


@router.put(
    ONE + "/certificate",
    response_model=DomainRead,
    responses=error_responses(400, 401, 403, 404, 413, 422),
)
def upload_certificate(
    body: CertificateUpload,
    deployment_id: str,
    hostname: str,
    environment: str = ENVIRONMENT,
    principal: Principal = Depends(writer),
    session: Session = Depends(get_session),
) -> DomainRead:
    """Serve the owner's certificate and key for this hostname (checked: PEM, the key matches,
    the names cover the hostname, not expired); the key is never answered back."""
    with session.begin():
        domain = _domain(session, principal, deployment_id, environment, hostname)
        row = tls.upload_certificate(
            session, domain=domain, fullchain_pem=body.certificate, key_pem=body.private_key
        )
        return _read(domain, environment, row)


@router.delete(
    ONE + "/certificate", response_model=DomainRead, responses=error_responses(401, 403, 404, 422)
)
def use_acme_certificate(
    deployment_id: str,
    hostname: str,
    environment: str = ENVIRONMENT,
    principal: Principal = Depends(writer),
    session: Session = Depends(get_session),
) -> DomainRead:
    """Drop an uploaded certificate: the ACME CA issues one (if configured), else plain HTTP."""
    acme = bool(get_settings().acme_directory_url)
    with session.begin():
        domain = _domain(session, principal, deployment_id, environment, hostname)
        return _read(domain, environment, tls.drop_upload(session, domain=domain, acme=acme))
