"""Traffic through the Router: routes, servers of replicas, the switch, drain, removal.

``switch_traffic`` is the one traffic switch: promote (also a canary's final
promotion, which is an ordinary promote switch once the steps are done) and a warm
rollback move traffic with it. A canary's weight steps (``set_canary_weight``,
``stop_canary_traffic``) only change weights; nothing is drained until the switch.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import replace
from typing import Any

from shipway.catalog.models import Release
from shipway.config import get_settings
from shipway.deployments.addresses import route_key
from shipway.releases.analysis import server_weights
from shipway.router.base import Route, Router, RouterError, Server, ServerState
from shipway.router.current import get_router, router_config
from shipway.runtime.base import Replica

DRAIN_POLL_SECONDS = 0.2
FULL_WEIGHT = 100
CANARY_TRAFFIC_STATES = ("analysing", "paused", "aborted")  # weights a canary left in place


def release_prefix(release_id: str) -> str:
    """The name prefix of a release's router servers (``sw-<release id>-``)."""
    return f"sw-{release_id}-"


def servers_of(replicas: Iterable[Replica], *, weight: int = FULL_WEIGHT) -> list[Server]:
    """The router servers of ``replicas`` (at the endpoints the runtime reports), at ``weight``.

    Replicas without an endpoint (stopped before they published a port) are left out.
    """
    return [server_of(r, weight=weight) for r in replicas if r.endpoint is not None]


def server_of(
    replica: Replica, *, weight: int = FULL_WEIGHT, state: ServerState = "ready"
) -> Server:
    """The router server of one replica with an endpoint."""
    endpoint = replica.endpoint
    if endpoint is None:
        raise ValueError(f"replica {replica.name} publishes no endpoint")
    return Server(
        name=replica.name,
        address=endpoint.address,
        port=endpoint.port,
        weight=weight,
        state=state,
    )


def ensure_route(key: str) -> str:
    """Create the route ``key`` if it is missing; returns the key."""
    get_router().ensure_route(Route(key))
    return key


def route_of(release: Release) -> str:
    """The (ensured) route key of a release's environment."""
    return ensure_route(route_key(release.deployment_id, release.environment))


def prepare_route(key: str) -> None:
    """Create a new environment's route (an HAProxy reload) while containers start.

    Only on a running HAProxy: one started from this short-lived thread would die
    with it when not daemonised. A failure is raised again by the switch's own
    ensure_route, in its phase; meanwhile a route without servers answers 503.
    """
    if router_config().is_running():
        ensure_route(key)


def switch_traffic(router: Router, key: str, *, to: list[Server]) -> None:
    """Send all new requests of route ``key`` to the servers ``to``.

    They are added (or updated) first, then every other ready server is drained, so
    the route never lacks a ready server; in-flight requests on the drained ones finish.
    """
    names = {server.name for server in to}
    for server in to:
        router.add_server(key, server)
    for server in router.servers(key):
        if server.name not in names and server.state == "ready":
            router.drain(key, server.name)


def set_canary_weight(
    router: Router, key: str, *, percent: int, stable_names: list[str], canary: list[Server]
) -> None:
    """Give the canary servers ``percent`` of new requests (the stable ones get the rest)."""
    stable_weight, canary_weight = server_weights(
        percent, stable_servers=len(stable_names), canary_servers=len(canary)
    )
    present = {s.name: s for s in router.servers(key)}
    for name in stable_names:
        if name in present and present[name].weight != stable_weight:
            router.set_weight(key, name, stable_weight)
    for server in canary:
        have = present.get(server.name)
        if have is None or have.state != "ready":
            router.add_server(
                key, Server(server.name, server.address, server.port, weight=canary_weight)
            )
        elif have.weight != canary_weight:
            router.set_weight(key, server.name, canary_weight)


def stop_canary_traffic(
    router: Router, key: str, *, stable_names: list[str], canary: list[Server]
) -> None:
    """Canary servers to weight 0, then the stable ones back to full weight."""
    present = {s.name for s in router.servers(key)}
    for server in canary:
        if server.name in present:
            router.set_weight(key, server.name, 0)
    for name in stable_names:
        if name in present:
            router.set_weight(key, name, FULL_WEIGHT)


def restored_weights(servers: list[Server], *, release: Release) -> list[Server]:
    """``servers`` of a route with the weights of ``release``'s canary (reconciliation).

    Ready servers that are not the canary's are the stable release's.
    """
    state = (release.rollout or {}).get("canary") or {}
    if state.get("state") not in CANARY_TRAFFIC_STATES:
        return servers
    prefix = release_prefix(release.id)
    canary = [s for s in servers if s.name.startswith(prefix)]
    stable = [s for s in servers if not s.name.startswith(prefix) and s.state == "ready"]
    stable_weight, canary_weight = server_weights(
        int(state.get("weight") or 0), stable_servers=len(stable), canary_servers=len(canary)
    )
    return [
        replace(s, weight=canary_weight, state="ready")
        if s in canary
        else replace(s, weight=stable_weight)
        if s in stable
        else s
        for s in servers
    ]


def drain(key: str, release_id: str) -> dict[str, Any]:
    """Wait until the release's servers have no sessions, or the drain timeout.

    Sessions are counted in old HAProxy workers too: a reload (another route added)
    during the drain leaves in-flight requests there, invisible to the new worker.
    """
    router = get_router()
    timeout = get_settings().drain_timeout_seconds
    prefix = release_prefix(release_id)
    started = time.monotonic()
    while True:
        sessions = router.open_sessions(key)
        busy = {name: n for name, n in sessions.items() if name.startswith(prefix) and n}
        waited = round(time.monotonic() - started, 3)
        if not busy:
            return {"drained": True, "waited_seconds": waited}
        if waited >= timeout:
            return {"drained": False, "waited_seconds": waited, "open_sessions": busy}
        time.sleep(DRAIN_POLL_SECONDS)


def remove_from_router(key: str, release_id: str) -> None:
    """Remove the release's servers from the route (each one that is still busy stays)."""
    router = router_config()
    if not router.is_running():
        return  # its saved state is corrected by the next reconciliation
    prefix = release_prefix(release_id)
    with suppress(RouterError):
        for server in router.servers(key):
            if server.name.startswith(prefix):
                with suppress(RouterError):  # one still-busy server must not keep the others
                    router.remove_server(key, server.name)
