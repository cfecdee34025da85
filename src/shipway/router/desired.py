"""Checking the routes a caller asks for and turning them into a desired state with ports."""

from __future__ import annotations

from shipway.router import spares
from shipway.router.base import Route, RouterError, Server
from shipway.router.state import DesiredState, RouteState, SparePool, allocate_port


def check_unique(routes: dict[Route, list[Server]]) -> None:
    """RouterError if a route key, or a server name within a route, appears twice."""
    keys = [route.key for route in routes]
    if len(keys) != len(set(keys)):
        raise RouterError(f"a route key appears twice: {sorted(keys)}")
    for route, servers in routes.items():
        names = [s.name for s in servers]
        if len(names) != len(set(names)):
            raise RouterError(f"route {route.key} has a server name twice: {names}")


def listen_ports(state: DesiredState) -> dict[str, int]:
    """The listen port of each route of ``state``."""
    return {key: r.listen_port for key, r in state.routes.items()}


def resolve_ports(
    routes: dict[Route, list[Server]],
    old: DesiredState,
    *,
    bind_host: str,
    port_range: tuple[int, int],
) -> DesiredState:
    """Explicit ports first, then ports (and slots) routes already had, then spares (the
    one on an explicit port, else any), then free ones."""
    pool = SparePool(dict(old.spares.slots), old.spares.next_slot)
    new = DesiredState(hosts=old.hosts, spares=pool)  # hosts change only through hosts.py
    for route in routes:
        kept = old.routes.get(route.key)
        port = route.listen_port or (kept.listen_port if kept else 0)
        if kept and port == kept.listen_port:
            new.routes[route.key] = RouteState(port, list(routes[route]), kept.slot)
        elif spare := spares.take(pool, port):
            new.routes[route.key] = RouteState(spare.listen_port, list(routes[route]), spare.slot)
        else:
            new.routes[route.key] = RouteState(listen_port=port, servers=list(routes[route]))
    for route_state in new.routes.values():
        if route_state.listen_port == 0:
            taken = spares.ports_in_use(new)
            route_state.listen_port = allocate_port(bind_host, port_range, taken)
    ports = [*listen_ports(new).values(), *pool.slots.values()]
    if len(ports) != len(set(ports)):
        raise RouterError(f"two routes share a listen port: {listen_ports(new)}")
    return new
