"""The router's desired state: a JSON file that every config is generated from.

Each change made through the runtime API is written here too, so a reload or a
restart of HAProxy brings back every route, port, server, weight and state.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from shipway.router.base import Route, RouterError, Server

STATE_FILE = "state.json"
LOCK_FILE = "router.lock"
FORMAT_VERSION = 2  # 2 added hosts; a version 1 file reads as having none


@dataclass
class RouteState:
    """One route's port and servers, in the order they were added."""

    listen_port: int
    servers: list[Server] = field(default_factory=list)

    def server(self, name: str) -> Server | None:
        """The server called ``name``, if any."""
        return next((s for s in self.servers if s.name == name), None)

    def put(self, server: Server) -> None:
        """Add or replace the server with the same name (keeping its position)."""
        for index, existing in enumerate(self.servers):
            if existing.name == server.name:
                self.servers[index] = server
                return
        self.servers.append(server)

    def drop(self, name: str) -> None:
        """Forget the server called ``name``."""
        self.servers = [s for s in self.servers if s.name != name]

    def update(self, name: str, **changes: Any) -> None:
        """Change fields of a known server."""
        current = self.server(name)
        if current is not None:
            self.put(replace(current, **changes))


@dataclass
class HostTable:
    """Host-based routing on the shared listeners: which route each hostname goes to, which
    hostnames have a certificate installed (its PEM lives in ``certs/``, mode 0600; here
    only its fingerprint), and which redirect to HTTPS or send HSTS."""

    routes: dict[str, str] = field(default_factory=dict)  # hostname → route key, in order
    certificates: dict[str, str] = field(default_factory=dict)  # hostname → sha256 of PEM
    redirects: list[str] = field(default_factory=list)
    hsts: list[str] = field(default_factory=list)


@dataclass
class DesiredState:
    """Every route by key, and the hostnames routed to them."""

    routes: dict[str, RouteState] = field(default_factory=dict)
    hosts: HostTable = field(default_factory=HostTable)

    def copy(self) -> DesiredState:
        """A copy whose routes, server lists and host table can change independently."""
        return DesiredState(
            routes={k: RouteState(r.listen_port, list(r.servers)) for k, r in self.routes.items()},
            hosts=HostTable(
                routes=dict(self.hosts.routes),
                certificates=dict(self.hosts.certificates),
                redirects=list(self.hosts.redirects),
                hsts=list(self.hosts.hsts),
            ),
        )

    def route(self, key: str) -> RouteState:
        """The route ``key``, or RouterError if it does not exist."""
        try:
            return self.routes[key]
        except KeyError:
            raise RouterError(f"no route {key!r}") from None

    def as_routes(self) -> dict[Route, list[Server]]:
        """The state in the shape ``Router.sync`` takes."""
        return {Route(k, r.listen_port): list(r.servers) for k, r in self.routes.items()}

    def to_json(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "version": FORMAT_VERSION,
            "routes": {
                key: {
                    "listen_port": route.listen_port,
                    "servers": [_server_json(s) for s in route.servers],
                }
                for key, route in sorted(self.routes.items())
            },
            "hosts": {
                "routes": dict(self.hosts.routes),
                "certificates": dict(self.hosts.certificates),
                "redirects": list(self.hosts.redirects),
                "hsts": list(self.hosts.hsts),
            },
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DesiredState:
        """Parse what ``to_json`` wrote."""
        if data.get("version") not in (1, FORMAT_VERSION):
            raise RouterError(f"unknown router state version {data.get('version')!r}")
        return cls(
            routes={
                key: RouteState(
                    listen_port=int(route["listen_port"]),
                    servers=[Server(**s) for s in route["servers"]],
                )
                for key, route in data["routes"].items()
            },
            hosts=HostTable(**data.get("hosts", {})),
        )


def _server_json(server: Server) -> dict[str, Any]:
    """A server as JSON (what ``asdict`` gives, without its deep copy: it is hot)."""
    return {
        "name": server.name,
        "address": server.address,
        "port": server.port,
        "weight": server.weight,
        "state": server.state,
    }


# The last state read or written per file, by (inode, mtime, size): parsing a big router's
# state on every server change made each change O(routes). Every writer replaces the file
# (a new inode), so another process's change is never missed.
_parsed: dict[Path, tuple[tuple[int, int, int], DesiredState]] = {}


def load_state(directory: Path) -> DesiredState:
    """The saved state of ``directory`` (empty if none was saved); the caller's own copy."""
    path = directory / STATE_FILE
    try:
        stamp = _stamp(path)
        cached = _parsed.get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1].copy()
        state = DesiredState.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        return DesiredState()
    _parsed[path] = (stamp, state.copy())
    return state


def _stamp(path: Path) -> tuple[int, int, int]:
    info = path.stat()
    return info.st_ino, info.st_mtime_ns, info.st_size


def save_state(directory: Path, state: DesiredState) -> None:
    """Write the state atomically (a reader never sees half a file)."""
    # Compact, one server per line: the C encoder (indent= would use the slow pure-Python
    # one, which made every server change cost O(routes) milliseconds on big routers).
    path = directory / STATE_FILE
    write_atomic(path, json.dumps(state.to_json(), separators=(",", ":")) + "\n")
    _parsed[path] = (_stamp(path), state.copy())


def write_atomic(path: Path, text: str, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``text`` through a synced temporary file (created with
    ``mode``: 0o600 for files with private keys, readable by their owner alone)."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.unlink(missing_ok=True)  # a leftover would keep its old mode
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


@contextmanager
def locked(directory: Path) -> Iterator[None]:
    """Hold the router's exclusive lock (shared by threads and processes using ``directory``)."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / LOCK_FILE).open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def allocate_port(host: str, port_range: tuple[int, int], taken: set[int]) -> int:
    """A port of the range that no route has and nothing listens on.

    The search starts at a random point so that two routers sharing a range
    rarely race for the same port (``noreuseport`` makes a lost race fail loudly).
    """
    low, high = port_range
    size = high - low + 1
    start = random.randrange(size)
    for offset in range(size):
        port = low + (start + offset) % size
        if port not in taken and _bindable(host, port):
            return port
    raise RouterError(f"no free port left in {low}-{high} on {host}")


def _bindable(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as HAProxy binds
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True
