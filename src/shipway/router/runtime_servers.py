"""A backend's servers through the runtime API (no reload): read them, turn what runs
into what is wanted, delete one once its last sessions ended."""

from __future__ import annotations

import ipaddress
import time

from shipway.router.base import RouterError, Server
from shipway.router.runtime_api import RuntimeAPI
from shipway.router.stat_rows import server_from_state_row

STILL_CONNECTED = "still has connections"


def runtime_servers(api: RuntimeAPI, backend: str) -> dict[str, Server]:
    """The servers of ``backend`` as HAProxy runs them now, by name."""
    servers = [server_from_state_row(row) for row in api.server_state_rows(backend)]
    return {s.name: s for s in servers}


def converge_route(api: RuntimeAPI, backend: str, servers: list[Server]) -> None:
    """Make ``backend`` run exactly ``servers`` (a busy one left stays in maint)."""
    have = runtime_servers(api, backend)
    wanted = {s.name for s in servers}
    for name in have.keys() - wanted:
        try:
            delete(api, backend, name, timeout=0)
        except RouterError as exc:  # busy: stays in maint, gone at the next reload
            if STILL_CONNECTED not in exc.answer:
                raise
    for server in servers:
        converge(api, backend, server, have.get(server.name))


def converge(api: RuntimeAPI, backend: str, want: Server, have: Server | None) -> None:
    """Runtime API commands that turn ``have`` into ``want`` (no reload)."""
    target = f"{backend}/{want.name}"
    if have is not None and not _same_endpoint(have, want):
        delete(api, backend, want.name, timeout=0)
        have = None
    if have is None:
        # Created in maint. Never pass "enabled": in 2.6 it leaves the server
        # outside the load-balancing tree (haproxy/haproxy#2497).
        api.change(f"add server {target} {want.endpoint} weight {want.weight}")
        have = Server(want.name, want.address, want.port, want.weight, "maint")
    if have.weight != want.weight:
        api.change(f"set server {target} weight {want.weight}")
    if have.state != want.state:
        api.change(f"set server {target} state {want.state}")


def delete(api: RuntimeAPI, backend: str, name: str, *, timeout: float) -> None:
    """Maint, then ``del server`` until its sessions ended (RouterError after ``timeout``)."""
    api.change(f"set server {backend}/{name} state maint")
    deadline = time.monotonic() + timeout
    while True:
        try:
            api.change(f"del server {backend}/{name}")
            return
        except RouterError as exc:
            if STILL_CONNECTED not in exc.answer or time.monotonic() >= deadline:
                raise
        time.sleep(0.05)


def _same_endpoint(a: Server, b: Server) -> bool:
    return a.port == b.port and ipaddress.ip_address(a.address) == ipaddress.ip_address(b.address)
