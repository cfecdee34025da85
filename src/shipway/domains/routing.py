"""What the router should serve by hostname, from the database; kept in step by a periodic
task of the relay lane (a domain added through the API is routed within a relay interval).
"""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.orm import Session

from shipway.catalog.models import Deployment, Environment
from shipway.deployments.addresses import route_key
from shipway.deployments.policy import HttpsPolicy, parse_policy
from shipway.domains.models import Certificate, Domain
from shipway.domains.service import GENERATED, ensure_generated
from shipway.jobs.periodic import periodic
from shipway.router.host_files import fingerprint
from shipway.router.hosts import HostChanges, HostRouting, WantedHosts

log = logging.getLogger(__name__)


def ensure_generated_hosts(
    session: Session, *, routes: set[str], apps_domain: str, acme: bool
) -> None:
    """Give every environment that has a route its generated hostname (and, with ``acme``,
    a certificate request): an environment is reachable by name once it is promoted."""
    named = select(Domain.environment_id).where(Domain.kind == GENERATED)
    rows = session.execute(  # only the environments still without one (none, usually)
        select(Environment, Deployment)
        .join(Deployment, Deployment.id == Environment.deployment_id)
        .where(Environment.id.not_in(named))
    ).all()
    for environment, deployment in rows:
        if route_key(deployment.id, environment.name) in routes:
            ensure_generated(
                session,
                deployment=deployment,
                environment=environment,
                apps_domain=apps_domain,
                acme=acme,
            )


def wanted_hosts(session: Session, *, routes: set[str]) -> WantedHosts:
    """Every hostname of an environment that has a route, generated ones first; the issued
    certificates of those hostnames (chain + key); HTTPS redirects and HSTS where one exists,
    as the environment's policy says (``https.redirect``, on by default; ``https.hsts``)."""
    rows = session.execute(
        select(Domain, Environment.name, Environment.policy)
        .join(Environment, Environment.id == Domain.environment_id)
        .order_by(Domain.kind != GENERATED, Domain.hostname)
    ).all()
    wanted = WantedHosts()
    https: dict[str, HttpsPolicy] = {}
    for domain, environment, policy in rows:
        key = route_key(domain.deployment_id, environment)
        if key in routes:
            wanted.routes[domain.hostname] = key
            https[domain.hostname] = parse_policy(policy).https
    certificates = session.scalars(
        select(Certificate).where(
            Certificate.hostname.in_(list(wanted.routes)), Certificate.status == "issued"
        )
    ).all()
    for certificate in certificates:
        if certificate.fullchain_pem and certificate.key_pem:
            pem = certificate.fullchain_pem.rstrip("\n") + "\n" + certificate.key_pem
            wanted.certificates[certificate.hostname] = pem
            if https[certificate.hostname].redirect:
                wanted.redirects.add(certificate.hostname)
            if https[certificate.hostname].hsts:
                wanted.hsts.add(certificate.hostname)
    return wanted


def in_step(hosts: HostRouting, wanted: WantedHosts) -> bool:
    """Whether the router already serves ``wanted`` (nothing to change)."""
    table = hosts.table()
    return (
        table.routes == wanted.routes
        and table.certificates == {h: fingerprint(p) for h, p in wanted.certificates.items()}
        and set(table.redirects) == wanted.redirects
        and set(table.hsts) == wanted.hsts
    )


@periodic(
    "host-routing",
    interval=lambda settings: (
        settings.relay_interval_seconds
        if settings.router_http_port or settings.router_https_port
        else 0
    ),
    lane="relay",
    order=15,  # after the router watch: a restarted HAProxy gets its hosts back at once
)
def sync_hosts() -> HostChanges | None:
    """Bring the router's host table in step with the database (runtime API, no reload)."""
    from shipway.config import get_settings
    from shipway.db import transaction
    from shipway.router.current import router_config

    settings = get_settings()
    router = router_config()
    hosts: HostRouting | None = getattr(router, "hosts", None)
    if hosts is None or not hosts.enabled or not router.is_running():
        return None
    routes = {route.key for route in router.desired()}
    with transaction() as session:
        ensure_generated_hosts(
            session,
            routes=routes,
            apps_domain=settings.apps_domain,
            acme=bool(settings.acme_directory_url),
        )
    with transaction() as session:
        wanted = wanted_hosts(session, routes=routes)
    if in_step(hosts, wanted):
        return None
    changes = hosts.sync(wanted)
    if changes.changed:
        log.info(
            "router hosts: routed %s, unrouted %s, certificates installed %s, removed %s",
            changes.routed, changes.unrouted, changes.installed, changes.removed_certificates,
        )  # fmt: skip
    return changes
