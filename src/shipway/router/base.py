"""The Router protocol: what promote, rollback and canary need from a load balancer."""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass
from typing import Literal, Protocol

ServerState = Literal["ready", "drain", "maint"]
SERVER_STATES: tuple[ServerState, ...] = ("ready", "drain", "maint")
MAX_WEIGHT = 256

# HAProxy identifiers; also keeps runtime API commands free of spaces, ';' and newlines.
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,99}$")


class RouterError(Exception):
    """The router refused or failed an operation; ``answer`` is HAProxy's reply, if any."""

    def __init__(self, message: str, *, command: str | None = None, answer: str = "") -> None:
        super().__init__(message)
        self.message, self.command, self.answer = message, command, answer


@dataclass(frozen=True)
class Route:
    """One public address: frontend ``fe_<key>`` → backend ``be_<key>``.

    ``listen_port`` 0 means "the port this route already has, else a free one".
    """

    key: str
    listen_port: int = 0

    def __post_init__(self) -> None:
        check_name(self.key, "route key")
        if not 0 <= self.listen_port < 65536:
            raise RouterError(f"bad listen port {self.listen_port} for route {self.key}")

    @property
    def frontend(self) -> str:
        """HAProxy frontend name."""
        return f"fe_{self.key}"

    @property
    def backend(self) -> str:
        """HAProxy backend name."""
        return f"be_{self.key}"


@dataclass(frozen=True)
class Server:
    """One replica behind a route, with its weight (0-256) and admin state."""

    name: str
    address: str
    port: int
    weight: int = 100
    state: ServerState = "ready"

    def __post_init__(self) -> None:
        check_name(self.name, "server name")
        if not _is_ip(self.address):
            raise RouterError(f"server {self.name}: address must be an IP, not {self.address!r}")
        if not 0 < self.port < 65536:
            raise RouterError(f"server {self.name}: bad port {self.port}")
        check_weight(self.weight)
        if self.state not in SERVER_STATES:
            raise RouterError(f"server {self.name}: bad state {self.state!r}")

    @property
    def endpoint(self) -> str:
        """``address:port`` as HAProxy writes it (IPv6 in brackets)."""
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class ServerStats:
    """Counters of one server since the current HAProxy worker started."""

    name: str
    status: str  # UP / no check / DRAIN / MAINT / DOWN …
    weight: int
    scur: int  # current sessions
    stot: int  # total sessions
    req_tot: int
    hrsp_1xx: int
    hrsp_2xx: int
    hrsp_3xx: int
    hrsp_4xx: int
    hrsp_5xx: int
    econ: int  # connection errors
    eresp: int  # response errors
    rtime_ms: int  # average response time (last 1024 requests)
    ttime_ms: int  # average total session time (last 1024 requests)


@functools.lru_cache(maxsize=4096)  # a router's state holds the same few node addresses
def _is_ip(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


@functools.lru_cache(maxsize=65536)  # every state load checks every name again
def _is_name(value: str) -> bool:
    return _NAME.match(value) is not None


def check_name(value: str, what: str) -> str:
    """``value`` if it is a safe HAProxy identifier, else RouterError."""
    if not _is_name(value):
        raise RouterError(f"bad {what} {value!r}: use letters, digits and _ . : -")
    return value


def check_weight(weight: int) -> int:
    """``weight`` if HAProxy accepts it (0-256), else RouterError."""
    if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= MAX_WEIGHT:
        raise RouterError(f"bad weight {weight!r}: must be an integer 0-{MAX_WEIGHT}")
    return weight


class Router(Protocol):
    """A load balancer with one public address per (deployment, environment).

    Server changes (add, weight, drain, ready, remove) take effect without a
    reload and drop no connection; adding or removing a route may reload.
    """

    def start(self) -> None:
        """Start the load balancer with every route and server of its saved desired state."""
        ...

    def is_running(self) -> bool:
        """Whether the load balancer is alive."""
        ...

    def desired(self) -> dict[Route, list[Server]]:
        """The saved desired state (what ``sync`` needs after a restart)."""
        ...

    def ensure_route(self, route: Route) -> Route:
        """Create the route if missing; returns it with its actual listen port."""
        ...

    def remove_route(self, key: str) -> None:
        """Remove a route and its servers (in-flight requests finish); no error if absent."""
        ...

    def add_server(self, key: str, server: Server) -> None:
        """Add a server to a route with its weight and state (idempotent for the same address)."""
        ...

    def set_weight(self, key: str, name: str, weight: int) -> None:
        """Change a server's weight (0 = no new requests)."""
        ...

    def drain(self, key: str, name: str) -> None:
        """Send no new requests to the server; in-flight requests finish."""
        ...

    def ready(self, key: str, name: str) -> None:
        """Put the server back into load balancing."""
        ...

    def remove_server(self, key: str, name: str) -> None:
        """Put the server in maintenance and delete it; fails while it still has sessions."""
        ...

    def servers(self, key: str) -> list[Server]:
        """The route's servers as the load balancer runs them now."""
        ...

    def stats(self, key: str) -> list[ServerStats]:
        """Per-server counters of the route."""
        ...

    def open_sessions(self, key: str) -> dict[str, int]:
        """Current sessions per server of the route, counting those still open in old
        load-balancer processes that finish requests after a reload."""
        ...

    def sync(self, routes: dict[Route, list[Server]]) -> dict[str, Route]:
        """Make the load balancer run exactly ``routes``; returns each route with its port."""
        ...

    def public_url(self, key: str) -> str:
        """The URL clients use to reach the route."""
        ...

    def route_url(self, key: str) -> str:
        """The route's own address (its port), whatever hostnames it also has."""
        ...
