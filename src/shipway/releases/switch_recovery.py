"""Router and database agree after a rollout's switch was interrupted.

A rollout moves traffic in the router first and records the switch in the database
after: a worker lost in between leaves users on a release the API does not show as
serving. Two rules settle it (docs/design-notes.md, "Router and database agree"):

- ``settle_routes`` runs first in the relay lane, so at every process start (relay,
  ``shipway up``) before anything is reaped or dispatched, and every relay pass after:
  a route that gives traffic to anything but the database's serving release is given
  back to it, unless its environment is *held*: a job runs there under a worker that
  is not certainly gone, or a lost job waits there to be resumed (it settles itself).
  Environments with no serving release, or with a canary whose weights the database
  records, are left as they are.
- ``resume_switch`` is the first thing a resumed rollout attempt does: when the
  previous attempt reached its switch and the router already sends traffic to the
  release's replicas, all running, the switch is completed and recorded at once;
  otherwise any traffic the router gives the release is taken back.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from shipway.catalog.models import Release
from shipway.deployments.addresses import route_key
from shipway.ids import utcnow
from shipway.jobs import lines
from shipway.jobs.context import JobContext
from shipway.jobs.models import Job
from shipway.jobs.periodic import periodic
from shipway.releases import canary
from shipway.releases.activation import load_rollout, record_switch
from shipway.releases.compensation import restore_serving
from shipway.releases.replicas import RELEASE_LABEL
from shipway.releases.traffic import (
    CANARY_TRAFFIC_STATES,
    FULL_WEIGHT,
    release_prefix,
    servers_of,
    switch_traffic,
)
from shipway.router.base import Router, RouterError, Server
from shipway.router.current import router_config
from shipway.runtime import get_runtime
from shipway.workers_registry.service import lease_owner_gone

log = logging.getLogger(__name__)
SERVING = ("ACTIVE", "UNHEALTHY")


def held_lines(session: Session, *, keys: Iterable[str] | None = None) -> set[str]:
    """Serial keys (of ``keys``, default all) whose route a job owns: one runs there under
    a worker not certainly gone (``lease_owner_gone``, or its lease expired), or a lost
    one waits there, requeued, to be resumed."""
    query = select(
        Job.serial_key, Job.state, Job.lease_owner, Job.lease_expires_at, Job.attempts
    ).where(
        Job.serial_key.is_not(None),
        or_(Job.state == "running", and_(Job.state == "queued", Job.attempts > 0)),
    )
    if keys is not None:
        query = query.where(Job.serial_key.in_(list(keys)))
    now = utcnow()
    held: set[str] = set()
    for row in session.execute(query).all():
        if row.serial_key in held:
            continue
        live = row.lease_expires_at is not None and row.lease_expires_at > now
        if row.state == "queued" or (
            live and not lease_owner_gone(session, owner=row.lease_owner, now=now)
        ):
            held.add(row.serial_key)
    return held


def canary_recorded(release: Release) -> bool:
    """Whether a DEPLOYING release is a canary whose traffic weights the database records."""
    state = ((release.rollout or {}).get("canary") or {}).get("state")
    return release.status == "DEPLOYING" and state in CANARY_TRAFFIC_STATES


def disagrees(servers: list[Server], *, serving_id: str) -> bool:
    """Whether a route gives traffic to anything but the serving release (whose servers are
    in it), or holds one of the serving release's servers back."""
    prefix = release_prefix(serving_id)
    own = [s for s in servers if s.name.startswith(prefix)]
    others_ready = any(s.state == "ready" for s in servers if not s.name.startswith(prefix))
    held_back = any(s.state != "ready" or s.weight != FULL_WEIGHT for s in own)
    return bool(own) and (others_ready or held_back)


def settle_routes(session: Session, *, router: Router) -> int:
    """Give each route whose environment no job holds back to the database's serving
    release (its servers ready at full weight, every other one draining); returns how
    many routes changed. A route lacking the serving release's servers is the router
    watch's to rebuild."""
    saved = {route.key: servers for route, servers in router.desired().items()}
    if not saved:
        return 0
    releases = session.scalars(
        select(Release).where(Release.status.in_((*SERVING, "DEPLOYING")))
    ).all()
    canaries = {
        lines.serial_key_for(r.deployment_id, r.environment) for r in releases if canary_recorded(r)
    }
    wrong: dict[str, Release] = {}
    for release in releases:
        key = route_key(release.deployment_id, release.environment)
        line = lines.serial_key_for(release.deployment_id, release.environment)
        eligible = release.status in SERVING and line not in canaries and key in saved
        if eligible and disagrees(saved[key], serving_id=release.id):
            wrong[line] = release
    if not wrong:
        return 0
    held = held_lines(session, keys=wrong)
    settled = 0
    for line, release in wrong.items():
        if line in held:
            continue
        key = route_key(release.deployment_id, release.environment)
        log.warning(
            "route %s served other releases than %s release %s with no job holding it; "
            "giving it back to %s",
            key,
            release.status,
            release.id,
            release.id,
        )
        restore_serving(session, release=release, key=key)
        settled += 1
    return settled


@periodic(
    "router-settle",
    interval=lambda settings: settings.relay_interval_seconds,
    lane="relay",
    order=-10,  # first: at process start, before the reaper requeues or anything is sent
)
def settle_pass() -> int:
    """Periodic: routes no job holds match the database (see ``settle_routes``)."""
    from shipway.db import transaction

    router = router_config()
    if not router.is_running():
        return 0  # a stopped HAProxy is the router watch's (desired_routes, same rule)
    with transaction() as session:
        return settle_routes(session, router=router)


def resume_switch(ctx: JobContext) -> bool:
    """First step of a resumed rollout attempt: True if it completed (and recorded) the
    switch its previous attempt made in the router; otherwise the router's traffic to the
    release, if any, is given back to the serving release and the rollout goes on."""
    with ctx.session() as session:
        job, release, _, _ = load_rollout(session, ctx.job_id)
    if ctx.attempt < 2 or release.status != "DEPLOYING" or canary_recorded(release):
        return False
    key = route_key(release.deployment_id, release.environment)
    router = router_config()
    if not router.is_running():
        return False  # rebuilt by the router watch; the rollout goes on as usual
    try:
        routed = [s for s in router.servers(key) if s.name.startswith(release_prefix(release.id))]
    except RouterError:
        return False  # no route yet: nothing was switched
    if not any(s.state == "ready" for s in routed):
        return False
    replicas = get_runtime().replicas({RELEASE_LABEL: release.id})
    up = len(replicas) == release.replicas > 0
    up = up and all(r.running and r.endpoint is not None for r in replicas)
    if job.phase == "switch" and up:
        ctx.phase("switch", resumed=True, replicas=len(replicas))
        switch_traffic(router, key, to=servers_of(replicas))
        record_switch(ctx)
        canary.complete_resumed(ctx, release.id)
        log.warning("job %s: completed the switch its previous attempt made", ctx.job_id)
        return True
    with ctx.session() as session:
        restore_serving(session, release=release, key=key)
    return False
