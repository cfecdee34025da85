"""The router's desired state: JSON files that every config is generated from.

Each change made through the runtime API is written here too, so a reload or a
restart of HAProxy brings back every route, port, server, weight and state. Each route
has a file of its own (``routes/<key>.json``), so a server change writes one small file
whatever the number of routes; ``state.json`` holds the host table.
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
SPARES_FILE = "spares.json"
ROUTES_DIR = "routes"
LOCK_FILE = "router.lock"
# 2 added hosts (a version 1 file reads as having none); 3 moved the routes to files of
# their own (a version 1 or 2 file's routes are read, and split out by the next save).
FORMAT_VERSION = 3


@dataclass
class RouteState:
    """One route's port and servers, in the order they were added; ``slot``: the spare
    frontend and backend it was given (spares.py), 0 for a route named after its key."""

    listen_port: int
    servers: list[Server] = field(default_factory=list)
    slot: int = 0

    def frontend(self, key: str) -> str:
        """Its HAProxy frontend's name."""
        return f"fe.{self.slot}" if self.slot else Route(key).frontend

    def backend(self, key: str) -> str:
        """Its HAProxy backend's name."""
        return f"be.{self.slot}" if self.slot else Route(key).backend

    def copy(self) -> RouteState:
        """A copy whose server list the caller may change."""
        return RouteState(self.listen_port, list(self.servers), self.slot)

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
class SparePool:
    """Frontends and backends declared with no route yet (slot → listen port), each ready
    to become a new route without a reload; ``next_slot`` never goes back, so a slot name
    is never reused."""

    slots: dict[int, int] = field(default_factory=dict)
    next_slot: int = 1


@dataclass
class DesiredState:
    """Every route by key, the hostnames routed to them, and the spare slots."""

    routes: dict[str, RouteState] = field(default_factory=dict)
    hosts: HostTable = field(default_factory=HostTable)
    spares: SparePool = field(default_factory=SparePool)

    def backend(self, key: str) -> str:
        """The HAProxy backend of route ``key`` (named after the key if there is none)."""
        route = self.routes.get(key)
        return route.backend(key) if route else Route(key).backend

    def route(self, key: str) -> RouteState:
        """The route ``key``, or RouterError if it does not exist."""
        try:
            return self.routes[key]
        except KeyError:
            raise RouterError(f"no route {key!r}") from None

    def as_routes(self) -> dict[Route, list[Server]]:
        """The state in the shape ``Router.sync`` takes."""
        return {Route(k, r.listen_port): list(r.servers) for k, r in self.routes.items()}


def route_to_json(route: RouteState) -> dict[str, Any]:
    """One route as JSON (servers spelled out by hand: ``asdict`` deep-copies, and this
    is on every server change)."""
    slot = {"slot": route.slot} if route.slot else {}
    return {
        "listen_port": route.listen_port,
        **slot,
        "servers": [
            {
                "name": s.name,
                "address": s.address,
                "port": s.port,
                "weight": s.weight,
                "state": s.state,
            }
            for s in route.servers
        ],
    }


def route_from_json(data: dict[str, Any]) -> RouteState:
    """Parse what ``route_to_json`` wrote."""
    return RouteState(
        listen_port=int(data["listen_port"]),
        servers=[Server(**s) for s in data["servers"]],
        slot=int(data.get("slot", 0)),
    )


def hosts_to_json(hosts: HostTable) -> dict[str, Any]:
    """The host table as ``state.json``."""
    return {
        "version": FORMAT_VERSION,
        "hosts": {
            "routes": dict(hosts.routes),
            "certificates": dict(hosts.certificates),
            "redirects": list(hosts.redirects),
            "hsts": list(hosts.hsts),
        },
    }


# The last value read or written per file, by (inode, mtime, size): parsing every file on
# every change made each change O(routes). Every writer replaces its file (a new inode),
# so another process's change is never missed. Callers get copies.
_parsed: dict[Path, tuple[tuple[int, int, int], Any]] = {}


def _read(path: Path, parse: Any) -> Any:
    """The parsed content of ``path`` (cached by its stamp); FileNotFoundError if absent."""
    stamp = _stamp(path)
    cached = _parsed.get(path)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    value = parse(json.loads(path.read_text()))
    _parsed[path] = (stamp, value)
    return value


def _write(path: Path, data: dict[str, Any], value: Any) -> None:
    # Compact: the C encoder (indent= would use the slow pure-Python one).
    write_atomic(path, json.dumps(data, separators=(",", ":")) + "\n")
    _parsed[path] = (_stamp(path), value)


def _stamp(path: Path) -> tuple[int, int, int]:
    info = path.stat()
    return info.st_ino, info.st_mtime_ns, info.st_size


def _route_path(directory: Path, key: str) -> Path:
    return directory / ROUTES_DIR / f"{key}.json"


def _state_file(directory: Path) -> dict[str, Any]:
    """``state.json`` (format 3); one of format 1 or 2, which also held the routes, is split
    into route files first."""
    path = directory / STATE_FILE
    try:
        data: dict[str, Any] = _read(path, lambda data: data)
    except FileNotFoundError:
        return {}
    if data.get("version") not in (1, 2, FORMAT_VERSION):
        raise RouterError(f"unknown router state version {data.get('version')!r}")
    if "routes" in data:
        for key, route in data["routes"].items():
            _save_route_file(directory, key, route_from_json(route))
        data = hosts_to_json(_hosts_from_json(data.get("hosts", {})))
        _write(path, data, data)
    return data


def _hosts_from_json(hosts: dict[str, Any]) -> HostTable:
    return HostTable(
        routes=dict(hosts.get("routes", {})),
        certificates=dict(hosts.get("certificates", {})),
        redirects=list(hosts.get("redirects", [])),
        hsts=list(hosts.get("hsts", [])),
    )


def load_hosts(directory: Path) -> HostTable:
    """The saved host table (the caller's own copy)."""
    return _hosts_from_json(_state_file(directory).get("hosts", {}))


def save_hosts(directory: Path, hosts: HostTable) -> None:
    """Write the host table (not when it is what the file already holds: every relay pass
    and every whole-state save comes here, and a rewrite costs an fsync)."""
    data = hosts_to_json(hosts)
    if _state_file(directory) != data:
        _write(directory / STATE_FILE, data, data)


def load_route(directory: Path, key: str) -> RouteState:
    """One route's saved state (the caller's own copy); RouterError if there is none."""
    _state_file(directory)
    try:
        route: RouteState = _read(_route_path(directory, key), route_from_json)
    except FileNotFoundError:
        raise RouterError(f"no route {key!r}") from None
    return route.copy()


def route_backend(directory: Path, key: str) -> str:
    """The HAProxy backend of route ``key`` as saved (named after the key if there is none)."""
    try:
        return load_route(directory, key).backend(key)
    except RouterError:
        return Route(key).backend


def load_spares(directory: Path) -> SparePool:
    """The saved spare pool (the caller's own copy)."""
    try:
        pool: SparePool = _read(directory / SPARES_FILE, _spares_from_json)
    except FileNotFoundError:
        return SparePool()
    return SparePool(dict(pool.slots), pool.next_slot)


def save_spares(directory: Path, pool: SparePool) -> None:
    """Write the spare pool (not when unchanged)."""
    if load_spares(directory) == pool:
        return
    copy = SparePool(dict(pool.slots), pool.next_slot)
    data = {"next_slot": pool.next_slot, "slots": {str(k): v for k, v in pool.slots.items()}}
    _write(directory / SPARES_FILE, data, copy)


def _spares_from_json(data: dict[str, Any]) -> SparePool:
    slots = {int(slot): int(port) for slot, port in data["slots"].items()}
    return SparePool(slots, int(data["next_slot"]))


def save_route(directory: Path, key: str, route: RouteState) -> None:
    """Write one route's state: one small file, whatever the number of routes."""
    _state_file(directory)
    _save_route_file(directory, key, route)


def _save_route_file(directory: Path, key: str, route: RouteState) -> None:
    path = _route_path(directory, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    copy = route.copy()
    _write(path, route_to_json(copy), copy)


def load_state(directory: Path) -> DesiredState:
    """The whole saved state of ``directory`` (empty if none was saved); the caller's copy."""
    routes = {key: route.copy() for key, route in _saved_routes(directory).items()}
    spares = load_spares(directory)
    for route in routes.values():  # held by a route (written by hand?): the route's
        spares.slots.pop(route.slot, None)
    return DesiredState(routes=routes, hosts=load_hosts(directory), spares=spares)


def save_state(directory: Path, state: DesiredState) -> tuple[set[str], set[str]]:
    """Write the whole state: only the route files that changed, removing those of routes
    that are gone. Returns the keys of the routes written and of those removed."""
    save_spares(directory, state.spares)  # first: a crash never leaves a slot in two files
    have = _saved_routes(directory)
    written = {key for key, route in state.routes.items() if have.get(key) != route}
    for key in written:
        _save_route_file(directory, key, state.routes[key])
    removed = set(have) - set(state.routes)
    for key in removed:
        _route_path(directory, key).unlink(missing_ok=True)
        _parsed.pop(_route_path(directory, key), None)
    save_hosts(directory, state.hosts)
    return written, removed


def _saved_routes(directory: Path) -> dict[str, RouteState]:
    """Every saved route, as cached (not copies)."""
    _state_file(directory)
    routes = {}
    for path in sorted((directory / ROUTES_DIR).glob("*.json")):
        try:
            routes[path.stem] = _read(path, route_from_json)
        except FileNotFoundError:  # removed meanwhile
            continue
    return routes


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
        if port not in taken and bindable(host, port):
            return port
    raise RouterError(f"no free port left in {low}-{high} on {host}")


def bindable(host: str, port: int) -> bool:
    """Whether nothing listens on ``host:port`` (bound as HAProxy binds)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as HAProxy binds
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True
