"""HAProxyRouter: routes as HAProxy frontends/backends, servers driven by the runtime API.

Server changes go only through the runtime API (no reload, no dropped
connection), and rewrite only that route's state and config files. Adding or removing a
route rewrites the config from the desired state (so the new worker has every current
server) and reloads seamlessly.
Every operation holds the router lock of the state folder, so API and worker
processes sharing one router never interleave a reload with a server change.
"""

from __future__ import annotations

import contextlib
import ipaddress
import time
from pathlib import Path

from shipway.config import Settings, get_settings
from shipway.router.base import (
    Route,
    Router,
    RouterError,
    Server,
    ServerState,
    ServerStats,
    check_name,
    check_weight,
)
from shipway.router.config_files import ConfigFiles
from shipway.router.desired import check_unique, listen_ports, resolve_ports
from shipway.router.haproxy_config import ConfigOptions
from shipway.router.host_files import HostFiles
from shipway.router.hosts import HostRouting
from shipway.router.process import HAProxyProcess, check_directory
from shipway.router.runtime_api import RuntimeAPI
from shipway.router.stat_rows import server_from_state_row, stat_int, stats_from_row
from shipway.router.state import (
    DesiredState,
    RouteState,
    allocate_port,
    load_route,
    load_state,
    locked,
    save_route,
    save_state,
)

_STILL_CONNECTED = "still has connections"


class HAProxyRouter:
    """A Router backed by one HAProxy process whose files live in ``directory``."""

    def __init__(
        self,
        directory: Path,
        *,
        binary: str = "haproxy",
        bind_host: str = "127.0.0.1",
        public_host: str = "",
        port_range: tuple[int, int] = (20000, 20999),
        daemon: bool = True,
        timeout: float = 10.0,
        hard_stop_after_seconds: float = 300.0,
        request_timeout_seconds: float = 60.0,
        http_port: int = 0,
        https_port: int = 0,
    ) -> None:
        self.directory = Path(directory).resolve()
        check_directory(self.directory)
        self.bind_host, self.public_host, self.port_range = bind_host, public_host, port_range
        self.options = ConfigOptions(
            directory=self.directory,
            bind_host=bind_host,
            request_timeout_seconds=request_timeout_seconds,
            hard_stop_after_seconds=hard_stop_after_seconds,
            http_port=http_port,
            https_port=https_port,
        )
        self.api = RuntimeAPI(self.options.admin_socket, timeout=timeout)
        self.process = HAProxyProcess(
            self.directory, binary=binary, daemon=daemon, timeout=timeout, api=self.api
        )
        self.hosts = HostRouting(options=self.options, api=self.api, is_running=self.is_running)
        self.config_files = ConfigFiles(self.options)

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> HAProxyRouter:
        """A router configured by ``SHIPWAY_ROUTER_*`` / ``SHIPWAY_HAPROXY_BINARY``."""
        s = settings or get_settings()
        router = cls(
            s.resolved_router_dir,
            binary=s.haproxy_binary,
            bind_host=s.router_bind_host,
            public_host=s.router_public_host,
            port_range=s.router_ports,
            daemon=s.router_daemon,
            timeout=s.router_start_timeout_seconds,
            hard_stop_after_seconds=s.router_hard_stop_after_seconds,
            request_timeout_seconds=s.router_request_timeout_seconds,
            http_port=s.router_http_port,
            https_port=s.router_https_port,
        )
        router.process.external = s.router_external  # run by `shipway router run`
        return router

    # -- process lifecycle -------------------------------------------------

    def start(self) -> None:
        """Start HAProxy with every route and server of the saved desired state (an external
        one is only waited for: its owner restores the state)."""
        if self.process.external:
            return self.process.start()
        with locked(self.directory):
            if self.process.is_running():
                return
            state = load_state(self.directory)
            with self._config_in_place(state):
                self.process.start()
            self._restore_runtime_only(state)

    def stop(self, *, graceful: bool = False, timeout: float = 10.0) -> None:
        """Stop HAProxy (``graceful``: let in-flight requests finish first)."""
        with locked(self.directory):
            self.process.stop(graceful=graceful, timeout=timeout)

    def restart(self) -> None:  # from the saved desired state (drops open connections)
        self.stop()
        self.start()

    def is_running(self) -> bool:
        return self.process.is_running()

    def reload(self) -> None:
        """Regenerate haproxy.cfg from the saved state and reload seamlessly."""
        with locked(self.directory):
            self._require_running()
            self._apply_config(load_state(self.directory))

    def desired(self) -> dict[Route, list[Server]]:
        """The saved desired state (what ``sync`` needs after a restart)."""
        with locked(self.directory):
            return load_state(self.directory).as_routes()

    # -- routes ----------------------------------------------------------------

    def ensure_route(self, route: Route) -> Route:
        """Create the route if missing (config reload); returns it with its listen port."""
        with locked(self.directory):
            self._require_running()
            with contextlib.suppress(RouterError):  # the common case: one file, no reload
                port = load_route(self.directory, route.key).listen_port
                if route.listen_port in (0, port) and route.backend in self.api.backends():
                    return Route(route.key, port)
            state = load_state(self.directory)
            existing = state.routes.get(route.key)
            port = route.listen_port or (
                existing.listen_port if existing else self._free_port(state, route.key)
            )
            servers = existing.servers if existing else []
            state.routes[route.key] = RouteState(listen_port=port, servers=servers)
            self._apply_config(state)
            return Route(route.key, port)

    def remove_route(self, key: str) -> None:
        """Remove the route (config reload; its in-flight requests finish); no error if absent."""
        with locked(self.directory):
            self._require_running()
            state = load_state(self.directory)
            if (
                state.routes.pop(key, None) is None
                and Route(key).backend not in self.api.backends()
            ):
                return
            self._apply_config(state)

    def public_url(self, key: str) -> str:
        """``https://hostname`` once a hostname of the route has a certificate, else its port."""
        by_host = self.hosts.url(key)
        return by_host if by_host and by_host.startswith("https://") else self.route_url(key)

    def route_url(self, key: str) -> str:
        """The route's own address, ``http://host:port`` (its port-per-environment frontend)."""
        with locked(self.directory):
            port = load_route(self.directory, key).listen_port
        host = self.public_host or self.bind_host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"

    # -- servers (runtime API only) --------------------------------------------

    def add_server(self, key: str, server: Server) -> None:
        """Add (or update to) ``server``: same name with another address is replaced."""
        with locked(self.directory):
            self._require_running()
            route_state = load_route(self.directory, key)
            backend = Route(key).backend
            have = self._runtime_servers(backend).get(server.name)
            self._converge(backend, server, have)
            route_state.put(server)
            self._save_route(key, route_state)

    def set_weight(self, key: str, name: str, weight: int) -> None:
        """Change a server's weight (0-256; 0 = no new requests)."""
        check_weight(weight)
        self._change(key, name, f"weight {weight}", weight=weight)

    def drain(self, key: str, name: str) -> None:
        """No new requests to the server; in-flight requests finish."""
        self._change(key, name, "state drain", state="drain")

    def ready(self, key: str, name: str) -> None:
        """Put the server back into load balancing."""
        self._change(key, name, "state ready", state="ready")

    def maint(self, key: str, name: str) -> None:
        """Maintenance: no traffic at all (established requests still finish)."""
        self._change(key, name, "state maint", state="maint")

    def remove_server(self, key: str, name: str, *, timeout: float = 5.0) -> None:
        """Set maint, then delete; waits up to ``timeout`` for its last sessions to end."""
        check_name(name, "server name")
        with locked(self.directory):
            self._require_running()
            route_state = load_route(self.directory, key)
            backend = Route(key).backend
            try:
                if name in self._runtime_servers(backend):
                    self._delete(backend, name, timeout=timeout)
            except RouterError:
                route_state.update(name, state="maint")
                self._save_route(key, route_state)
                raise
            route_state.drop(name)
            self._save_route(key, route_state)

    def servers(self, key: str) -> list[Server]:
        """The route's servers as HAProxy runs them now (address, user weight, admin state)."""
        with locked(self.directory):
            return list(self._runtime_servers(Route(key).backend).values())

    def stats(self, key: str) -> list[ServerStats]:
        """Per-server counters since the current worker started (a reload resets them)."""
        with locked(self.directory):
            rows = self.api.stat_rows(Route(key).backend)
        return [stats_from_row(row) for row in rows]

    def open_sessions(self, key: str) -> dict[str, int]:
        """Current sessions per server of the route, in the current worker *and* in old
        workers still finishing requests after a reload (whose counters ``stats`` misses)."""
        backend = Route(key).backend
        with locked(self.directory):
            rows = self.api.stat_rows(backend)
            for pid in self.process.master.status().old_workers:
                with contextlib.suppress(RouterError):  # it may exit meanwhile
                    rows += self.process.master.worker_stat_rows(pid, backend)
        sessions: dict[str, int] = {}
        for row in rows:
            sessions[row["svname"]] = sessions.get(row["svname"], 0) + stat_int(row["scur"])
        return sessions

    # -- whole state -------------------------------------------------------------

    def sync(self, routes: dict[Route, list[Server]]) -> dict[str, Route]:
        """Make HAProxy run exactly ``routes``; a stopped HAProxy gets them on ``start``.

        Reloads only if the set of routes or a port changed (and keeps the old
        state if HAProxy rejects the new config); otherwise the state is saved
        and servers, weights and states converge through the runtime API, so
        stats counters survive.
        """
        check_unique(routes)
        with locked(self.directory):
            old = load_state(self.directory)
            new = resolve_ports(routes, old, bind_host=self.bind_host, port_range=self.port_range)
            if not self.process.is_running():
                self._save(new)
            elif listen_ports(new) != listen_ports(old) or self._runtime_backends_differ(new):
                self._apply_config(new)
            else:
                self._save(new)
                for key, route_state in new.routes.items():
                    self._converge_route(Route(key).backend, route_state.servers)
            return {key: Route(key, r.listen_port) for key, r in new.routes.items()}

    # -- internals -----------------------------------------------------------------

    def _require_running(self) -> None:
        if not self.process.is_running():
            raise RouterError(f"HAProxy is not running (router {self.directory}); start it first")

    def _change(self, key: str, name: str, what: str, **changes: int | ServerState) -> None:
        check_name(name, "server name")
        with locked(self.directory):
            self._require_running()
            route_state = load_route(self.directory, key)
            if route_state.server(name) is None:
                raise RouterError(f"route {key!r} has no server {name!r}")
            self.api.change(f"set server {Route(key).backend}/{name} {what}")
            route_state.update(name, **changes)
            self._save_route(key, route_state)

    def _runtime_servers(self, backend: str) -> dict[str, Server]:
        servers = [server_from_state_row(row) for row in self.api.server_state_rows(backend)]
        return {s.name: s for s in servers}

    def _converge_route(self, backend: str, servers: list[Server]) -> None:
        have = self._runtime_servers(backend)
        wanted = {s.name for s in servers}
        for name in have.keys() - wanted:
            try:
                self._delete(backend, name, timeout=0)
            except RouterError as exc:  # busy: stays in maint, gone at the next reload
                if _STILL_CONNECTED not in exc.answer:
                    raise
        for server in servers:
            self._converge(backend, server, have.get(server.name))

    def _converge(self, backend: str, want: Server, have: Server | None) -> None:
        """Runtime API commands that turn ``have`` into ``want`` (no reload)."""
        target = f"{backend}/{want.name}"
        if have is not None and not _same_endpoint(have, want):
            self._delete(backend, want.name, timeout=0)
            have = None
        if have is None:
            # Created in maint. Never pass "enabled": in 2.6 it leaves the server
            # outside the load-balancing tree (haproxy/haproxy#2497).
            self.api.change(f"add server {target} {want.endpoint} weight {want.weight}")
            have = Server(want.name, want.address, want.port, want.weight, "maint")
        if have.weight != want.weight:
            self.api.change(f"set server {target} weight {want.weight}")
        if have.state != want.state:
            self.api.change(f"set server {target} state {want.state}")

    def _delete(self, backend: str, name: str, *, timeout: float) -> None:
        self.api.change(f"set server {backend}/{name} state maint")
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.api.change(f"del server {backend}/{name}")
                return
            except RouterError as exc:
                if _STILL_CONNECTED not in exc.answer or time.monotonic() >= deadline:
                    raise
            time.sleep(0.05)

    def _apply_config(self, state: DesiredState) -> None:
        """Write the config of ``state`` and reload; on failure the previous config stays."""
        if not self.process.reads_route_files():
            # Started before conf.d existed: a reload would miss it. Once, a restart.
            self.process.stop(graceful=True, timeout=self.process.timeout)
            with self._config_in_place(state):
                self.process.start()
        else:
            with self._config_in_place(state):
                self.process.reload()
        save_state(self.directory, state)
        self._restore_runtime_only(state)

    def _config_in_place(self, state: DesiredState) -> contextlib.AbstractContextManager[None]:
        """The checked config of ``state`` in place for a start or reload (undone on failure)."""
        if self.hosts.enabled:  # the maps and crt-list the config names must exist
            HostFiles(self.directory).write(state.hosts)
        return self.config_files.replaced(state, self.process.check)

    def _save(self, state: DesiredState) -> None:
        """Save the state and keep the config files in step (a reload by hand loses nothing)."""
        written, removed = save_state(self.directory, state)
        self.config_files.write_routes(state, written, removed)

    def _save_route(self, key: str, route_state: RouteState) -> None:
        """Save one route's state and config file: O(1) whatever the number of routes."""
        save_route(self.directory, key, route_state)
        self.config_files.write_route(key, route_state)

    def _restore_runtime_only(self, state: DesiredState) -> None:
        """Drain is not expressible in a config: draining servers start at weight 0."""
        for key, route_state in state.routes.items():
            for server in route_state.servers:
                if server.state == "drain":
                    target = f"{Route(key).backend}/{server.name}"
                    self.api.change(f"set server {target} state drain")
                    self.api.change(f"set server {target} weight {server.weight}")

    def _runtime_backends_differ(self, state: DesiredState) -> bool:
        ours = {b for b in self.api.backends() if b.startswith("be_")}
        return ours != {Route(key).backend for key in state.routes}

    def _free_port(self, state: DesiredState, key: str) -> int:
        taken = {r.listen_port for k, r in state.routes.items() if k != key}
        return allocate_port(self.bind_host, self.port_range, taken)


def _as_router(router: HAProxyRouter) -> Router:  # mypy proves it implements Router
    return router


def _same_endpoint(a: Server, b: Server) -> bool:
    return a.port == b.port and ipaddress.ip_address(a.address) == ipaddress.ip_address(b.address)
