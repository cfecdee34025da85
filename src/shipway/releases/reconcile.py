"""Rebuild the router from the database and the engine's labelled containers.

Used when HAProxy (or the whole host) restarted: the database says which
release serves each environment and which ones drain; container labels say
where their replicas listen. Servers of releases still DEPLOYING keep whatever
the router had saved while a job holds their environment (its rollout owns the
route: ``switch_recovery.held_lines``); otherwise they drain, so a switch a lost
worker never recorded is undone. A canary's servers and the stable ones get the
weights of the step recorded in ``release.rollout["canary"]``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

from sqlalchemy import select
from sqlalchemy.orm import Session

from shipway.catalog.models import Release
from shipway.deployments.addresses import route_key
from shipway.jobs import lines
from shipway.jobs.periodic import periodic
from shipway.releases.replicas import RELEASE_LABEL
from shipway.releases.switch_recovery import held_lines
from shipway.releases.traffic import restored_weights, server_of
from shipway.router.base import Route, Router, RouterError, Server, ServerState
from shipway.runtime.base import Runtime

log = logging.getLogger(__name__)
SERVING = ("ACTIVE", "UNHEALTHY")
ROUTED = (*SERVING, "DRAINING", "DEPLOYING")
# Releases whose stopped replicas are started again. Not DRAINING: a retire stops
# those replicas on purpose, and reviving one mid-retire (after a worker was lost
# between stop and remove) put a server back in the router with no container.
REVIVED = SERVING
REVIVE_BACKOFF_MAX = 300.0
_revivals: dict[str, tuple[int, float]] = {}  # container id -> (starts, next start allowed)


@dataclass
class ReconcileReport:
    """What a reconciliation found and did."""

    started_router: bool = False
    routes: int = 0
    servers: int = 0


def desired_routes(
    session: Session, *, runtime: Runtime, saved: dict[Route, list[Server]]
) -> dict[Route, list[Server]]:
    """Every environment's servers as the database and the engine say they should be."""
    saved_by_key = {route.key: servers for route, servers in saved.items()}
    releases = session.scalars(select(Release).where(Release.status.in_(ROUTED))).all()
    settled = _unheld_with_serving(session, releases)
    routes: dict[str, list[Server]] = {}
    for release in releases:
        key = route_key(release.deployment_id, release.environment)
        servers = routes.setdefault(key, [])
        if release.status == "DEPLOYING" and not _in_canary(release):
            prefix = f"sw-{release.id}-"
            kept = [s for s in saved_by_key.get(key, []) if s.name.startswith(prefix)]
            servers += [replace(s, state="drain") for s in kept] if key in settled else kept
            continue
        state: ServerState = "ready" if release.status in (*SERVING, "DEPLOYING") else "drain"
        for replica in runtime.replicas({RELEASE_LABEL: release.id}):
            if replica.running and replica.endpoint is not None:
                servers.append(server_of(replica, state=state))
    for release in releases:  # a canary in progress: its weights and the stable's
        if release.status == "DEPLOYING" and _in_canary(release):
            key = route_key(release.deployment_id, release.environment)
            routes[key] = restored_weights(routes[key], release=release)
    return {Route(key): servers for key, servers in routes.items() if servers}


def _unheld_with_serving(session: Session, releases: Sequence[Release]) -> set[str]:
    """Route keys with a serving release and no job holding them: a switch a lost worker
    left there unrecorded is undone (``switch_recovery``); elsewhere the rollout's own."""
    serving = {
        lines.serial_key_for(r.deployment_id, r.environment): route_key(
            r.deployment_id, r.environment
        )
        for r in releases
        if r.status in SERVING
    }
    held = held_lines(session, keys=serving) if serving else set()
    return {key for line, key in serving.items() if line not in held}


def _in_canary(release: Release) -> bool:
    """Whether the release is a canary whose weights the database records."""
    state = ((release.rollout or {}).get("canary") or {}).get("state")
    return state in ("analysing", "paused", "aborted")


def reconcile_router(
    session: Session, *, router: Router, runtime: Runtime, only_if_down: bool
) -> ReconcileReport | None:
    """Start HAProxy if it is down and make its routes match the database.

    With ``only_if_down`` nothing happens while HAProxy runs (the periodic
    safety net); without it, a running router is converged too.
    """
    running = router.is_running()
    if running and only_if_down:
        return None
    report = ReconcileReport()
    if not running:
        router.start()
        report.started_router = True
    desired = desired_routes(session, runtime=runtime, saved=router.desired())
    router.sync(desired)
    report.routes = len(desired)
    report.servers = sum(len(s) for s in desired.values())
    log.info("router reconciled: %s", report)
    return report


def revive_replicas(session: Session, *, runtime: Runtime) -> int:
    """Start again the stopped replicas of releases that serve; returns how many.

    shipway never stops a replica of an ACTIVE or UNHEALTHY release itself, so a
    stopped one was stopped from outside:
    typically a restart of the Docker engine, which stops every container without a
    restart policy. Releases whose environment has a job running are left to that
    job. A replica that keeps stopping is started again with an exponential backoff
    (1 s, 2 s, … 5 min), so a crashing server is not restarted in a tight loop.
    """

    now = time.monotonic()
    for container_id, (_, not_before) in list(_revivals.items()):
        if now - not_before > 2 * REVIVE_BACKOFF_MAX:  # quiet for long enough: forgiven
            del _revivals[container_id]
    stopped = runtime.stopped_replicas(RELEASE_LABEL)
    if not stopped:
        return 0
    owners = {r.labels.get(RELEASE_LABEL, "") for r in stopped}
    releases = {
        r.id: r
        for r in session.scalars(
            select(Release).where(Release.id.in_(owners), Release.status.in_(REVIVED))
        ).all()
    }
    busy = lines.busy_lines(session)
    revived = 0
    for replica in stopped:
        release = releases.get(replica.labels.get(RELEASE_LABEL, ""))
        if release is None or f"{release.deployment_id}:{release.environment}" in busy:
            continue  # another database's container, or a job owns this environment now
        count, not_before = _revivals.get(replica.id, (0, 0.0))
        if now < not_before:
            continue
        _revivals[replica.id] = (count + 1, now + min(REVIVE_BACKOFF_MAX, 2.0**count))
        started = runtime.start_replica(replica.id)
        if started is not None and started.running:
            revived += 1
            log.warning(
                "replica %s of %s release %s was %s; started it again (at %s)",
                replica.name,
                release.status,
                release.id,
                replica.status,
                started.endpoint,
            )
    return revived


def follow_moved_replicas(session: Session, *, router: Router, runtime: Runtime) -> int:
    """Point the router at replicas the cluster moved (a task rescheduled after its node
    was lost runs on another node, on another port); returns how many servers moved.

    Serving releases only, and only where no job runs in the environment (a rollout
    owns its route until it ends). A replica not running yet is left for the next pass;
    meanwhile HAProxy retries and redispatches requests away from the dead server.
    """
    busy = lines.busy_lines(session)
    moved = 0
    for release in session.scalars(select(Release).where(Release.status.in_(SERVING))).all():
        if lines.serial_key_for(release.deployment_id, release.environment) in busy:
            continue
        key = route_key(release.deployment_id, release.environment)
        try:
            routed = {server.name: server for server in router.servers(key)}
        except (RouterError, KeyError):
            continue  # no route yet, or HAProxy down: reconcile_router handles that
        for replica in runtime.replicas({RELEASE_LABEL: release.id}):
            endpoint, have = replica.endpoint, routed.get(replica.name)
            if not replica.running or endpoint is None or have is None:
                continue
            if (have.address, have.port) == (endpoint.address, endpoint.port):
                continue
            router.add_server(key, server_of(replica, weight=have.weight, state=have.state))
            moved += 1
            log.warning(
                "replica %s of release %s moved from %s to %s; router follows",
                replica.name,
                release.id,
                have.endpoint,
                endpoint,
            )
    return moved


@periodic(
    "router-watch",
    interval=lambda settings: settings.relay_interval_seconds,
    lane="relay",
    order=10,  # after the relay pass: dispatching is never delayed by a router rebuild
)
def watch_router() -> ReconcileReport | None:
    """Periodic safety net: restart stopped replicas of serving releases, and a dead HAProxy
    that has routes; either way the router is rebuilt from the database and the engine."""
    from shipway.db import transaction
    from shipway.router.current import router_config
    from shipway.runtime import get_runtime

    router = router_config()
    revived = 0
    try:
        runtime = get_runtime()
        with transaction() as session:
            revived = revive_replicas(session, runtime=runtime)
        if runtime.endpoints_move and router.is_running():
            with transaction() as session:
                follow_moved_replicas(session, router=router, runtime=runtime)
    except Exception as error:  # engine unreachable: the router part still runs
        log.warning("replica watch skipped: %s", error)
    if (router.is_running() and not revived) or not router.desired():
        return None
    with transaction() as session:
        return reconcile_router(
            session, router=router, runtime=get_runtime(), only_if_down=not revived
        )
