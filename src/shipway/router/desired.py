"""Checking the routes a caller asks for and turning them into a desired state with ports."""

from __future__ import annotations

from shipway.router.base import Route, RouterError, Server
from shipway.router.state import DesiredState, RouteState, allocate_port


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
    """Explicit ports first, then ports routes already had, then free ones."""
    new = DesiredState(hosts=old.hosts)  # hosts change only through the host routing
    for route in routes:
        kept = old.routes.get(route.key)
        port = route.listen_port or (kept.listen_port if kept else 0)
        new.routes[route.key] = RouteState(listen_port=port, servers=list(routes[route]))
    for route_state in new.routes.values():
        if route_state.listen_port == 0:
            taken = {r.listen_port for r in new.routes.values()}
            route_state.listen_port = allocate_port(bind_host, port_range, taken)
    if len(listen_ports(new).values()) != len(set(listen_ports(new).values())):
        raise RouterError(f"two routes share a listen port: {listen_ports(new)}")
    return new
