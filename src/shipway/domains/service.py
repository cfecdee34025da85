"""Domains of environments: the generated host and custom domains (add, list, remove)."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shipway.catalog.models import Deployment, Environment
from shipway.deployments.service import ensure_environment, get_environment
from shipway.domains.hostnames import generated_hostname, normalize_hostname
from shipway.domains.models import Certificate, Domain
from shipway.domains.tls import request_certificate
from shipway.errors import Conflict, InvalidInput, NotFound
from shipway.ids import utcnow
from shipway.states import record_event

MAX_CUSTOM_DOMAINS = 50
GENERATED, CUSTOM = "generated", "custom"


def domains_of(
    session: Session, *, deployment: Deployment, environment: str, apps_domain: str, acme: bool
) -> list[Domain]:
    """The environment's hostnames: its generated one first, then custom ones by name."""
    env = get_environment(session, deployment=deployment, name=environment)
    ensure_generated(
        session, deployment=deployment, environment=env, apps_domain=apps_domain, acme=acme
    )
    rows = session.scalars(
        select(Domain).where(Domain.environment_id == env.id).order_by(Domain.hostname)
    ).all()
    return sorted(rows, key=lambda row: row.kind != GENERATED)


def ensure_generated(
    session: Session,
    *,
    deployment: Deployment,
    environment: Environment,
    apps_domain: str,
    acme: bool,
) -> Domain:
    """The environment's generated hostname under the apps domain (made on first use; with
    ``acme``, its certificate is asked for)."""
    existing = session.scalars(
        select(Domain).where(Domain.environment_id == environment.id, Domain.kind == GENERATED)
    ).first()
    if existing is not None:
        return existing
    hostname = generated_hostname(
        deployment_id=deployment.id,
        deployment_name=deployment.name,
        environment=environment.name,
        apps_domain=apps_domain,
    )
    if session.get(Domain, hostname) is not None:  # another deployment's tail clashed
        hostname = f"{environment.name}.{deployment.id.replace('_', '-').lower()}.{apps_domain}"
    try:
        domain = _insert(
            session,
            Domain(
                hostname=hostname,
                workspace_id=deployment.workspace_id,
                deployment_id=deployment.id,
                environment_id=environment.id,
                kind=GENERATED,
                created_by="shipway",
                created_at=utcnow(),
            ),
        )
    except Conflict:  # made at the same moment by the relay or another request
        made = session.get(Domain, hostname)
        if made is None or made.environment_id != environment.id:
            raise
        return made
    if acme:
        request_certificate(session, domain=domain)
    return domain


def add_domain(
    session: Session,
    *,
    deployment: Deployment,
    environment: str,
    hostname: str,
    actor: str,
    apps_domain: str,
    acme: bool,
) -> Domain:
    """Route ``hostname`` to the environment (created if missing); Conflict if it is taken.
    With ``acme``, its certificate is asked for at once."""
    name = normalize_hostname(hostname, apps_domain=apps_domain)
    env = ensure_environment(session, deployment=deployment, name=environment)
    taken = session.get(Domain, name)
    if taken is not None:
        here = taken.environment_id == env.id
        raise Conflict(
            f"{name} is already a domain of "
            + ("this environment" if here else "another environment"),
            code="domain_exists" if here else "domain_taken",
            hostname=name,
        )
    count = session.scalar(
        select(func.count())
        .select_from(Domain)
        .where(Domain.environment_id == env.id, Domain.kind == CUSTOM)
    )
    if (count or 0) >= MAX_CUSTOM_DOMAINS:
        raise InvalidInput(
            f"an environment has at most {MAX_CUSTOM_DOMAINS} custom domains", field="hostname"
        )
    domain = _insert(
        session,
        Domain(
            hostname=name,
            workspace_id=deployment.workspace_id,
            deployment_id=deployment.id,
            environment_id=env.id,
            kind=CUSTOM,
            created_by=actor,
            created_at=utcnow(),
        ),
    )
    if acme:
        request_certificate(session, domain=domain)
    _record(session, deployment, env, "domain.added", name, actor)
    return domain


def remove_domain(
    session: Session, *, deployment: Deployment, environment: str, hostname: str, actor: str
) -> Domain:
    """Stop routing a custom domain; another environment's (or workspace's) is NotFound."""
    env = get_environment(session, deployment=deployment, name=environment)
    domain = session.get(Domain, hostname.strip().lower().removesuffix("."))
    if domain is None or domain.environment_id != env.id:
        raise NotFound(
            f"domain {hostname} of environment {environment} not found", hostname=hostname
        )
    if domain.kind == GENERATED:
        raise Conflict(
            f"{domain.hostname} is the environment's generated hostname; it cannot be removed",
            code="domain_generated",
            hostname=domain.hostname,
        )
    certificate = session.get(Certificate, domain.hostname)
    if certificate is not None:
        session.delete(certificate)
    session.delete(domain)
    _record(session, deployment, env, "domain.removed", domain.hostname, actor)
    return domain


def find_domain(
    session: Session, *, deployment: Deployment, environment: Environment, hostname: str
) -> Domain:
    """A hostname of this environment, or NotFound (whoever else it belongs to)."""
    domain = session.get(Domain, hostname.strip().lower().removesuffix("."))
    if domain is None or domain.environment_id != environment.id:
        raise NotFound(
            f"domain {hostname} of environment {environment.name} of {deployment.id} not found",
            hostname=hostname,
        )
    return domain


def certificates_of(session: Session, domains: list[Domain]) -> dict[str, Certificate]:
    """The certificate rows of these hostnames, by hostname."""
    names = [domain.hostname for domain in domains]
    rows = session.scalars(select(Certificate).where(Certificate.hostname.in_(names))).all()
    return {row.hostname: row for row in rows}


def _insert(session: Session, domain: Domain) -> Domain:
    try:
        with session.begin_nested():
            session.add(domain)
            session.flush()
    except IntegrityError as error:  # added concurrently
        raise Conflict(
            f"{domain.hostname} was just added elsewhere",
            code="domain_taken",
            hostname=domain.hostname,
        ) from error
    return domain


def _record(
    session: Session, deployment: Deployment, env: Environment, kind: str, hostname: str, actor: str
) -> None:
    verb = "added to" if kind == "domain.added" else "removed from"
    record_event(
        session,
        workspace_id=deployment.workspace_id,
        subject_type="deployment",
        subject_id=deployment.id,
        from_state=None,
        to_state=None,
        reason=f"{kind}: {hostname} {verb} {env.name}",
        actor=actor,
        deployment_id=deployment.id,
        data={"environment": env.name, "hostname": hostname},
    )
