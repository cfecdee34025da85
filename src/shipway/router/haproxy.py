"""HAProxyRouter: routes as HAProxy frontends/backends, servers driven by the runtime API.

Server changes go only through the runtime API (no reload, no dropped
connection), and rewrite only that route's state and config files. A new route takes a
spare frontend and backend that a reload declared before (spares.py): no reload. Removing
a route, a port given by hand, or an empty pool rewrites the config from the desired state
(so the new worker has every current server) and reloads seamlessly.
Every operation holds the router lock of the state folder, so API and worker
processes sharing one router never interleave a reload with a server change.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from shipway.config import Settings, get_settings
from shipway.router import spares
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
from shipway.router.desired import check_unique, resolve_ports
from shipway.router.haproxy_config import ConfigOptions
from shipway.router.host_files import HostFiles
from shipway.router.hosts import HostRouting
from shipway.router.process import HAProxyProcess, check_directory
from shipway.router.runtime_api import RuntimeAPI
from shipway.router.runtime_servers import (
    converge,
    converge_route,
    delete,
    runtime_servers,
)
from shipway.router.stat_rows import stat_int, stats_from_row
from shipway.router.state import (
    DesiredState,
    RouteState,
    allocate_port,
    load_route,
    load_spares,
    load_state,
    locked,
    route_backend,
    save_route,
    save_spares,
    save_state,
)


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
        spare_routes: int = 64,
    ) -> None:
        self.directory = Path(directory).resolve()
        self.spare_routes = spare_routes  # the largest batch of spares a reload adds
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
            if spares.drop_unbindable(state.spares, bind_host=self.bind_host):
                save_spares(self.directory, state.spares)
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
        """Create the route if missing (a spare, else a config reload); returns it with its
        listen port."""
        with locked(self.directory):
            self._require_running()
            try:  # the common case: one file, no reload
                saved: RouteState | None = load_route(self.directory, route.key)
            except RouterError:
                saved = None
            if saved is None:
                if made := self._from_spare(route):  # the first time: two files, no reload
                    return made
            elif route.listen_port in (0, saved.listen_port) and self._serves(
                saved.backend(route.key)
            ):
                return Route(route.key, saved.listen_port)
            state = load_state(self.directory)
            existing = state.routes.get(route.key)
            port = route.listen_port or (
                existing.listen_port if existing else self._free_port(state, route.key)
            )
            servers = existing.servers if existing else []
            slot = existing.slot if existing and existing.listen_port == port else 0
            state.routes[route.key] = RouteState(port, servers, slot)
            self._apply_config(state)
            return Route(route.key, port)

    def remove_route(self, key: str) -> None:
        """Remove the route (config reload; its in-flight requests finish); no error if absent."""
        with locked(self.directory):
            self._require_running()
            state = load_state(self.directory)
            gone = state.routes.pop(key, None)
            if gone is None and Route(key).backend not in self.api.backends():
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
            backend = route_state.backend(key)
            converge(self.api, backend, server, runtime_servers(self.api, backend).get(server.name))
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
            backend = route_state.backend(key)
            try:
                if name in runtime_servers(self.api, backend):
                    delete(self.api, backend, name, timeout=timeout)
            except RouterError:
                route_state.update(name, state="maint")
                self._save_route(key, route_state)
                raise
            route_state.drop(name)
            self._save_route(key, route_state)

    def servers(self, key: str) -> list[Server]:
        """The route's servers as HAProxy runs them now (address, user weight, admin state)."""
        with locked(self.directory):
            return list(runtime_servers(self.api, route_backend(self.directory, key)).values())

    def stats(self, key: str) -> list[ServerStats]:
        """Per-server counters since the current worker started (a reload resets them)."""
        with locked(self.directory):
            rows = self.api.stat_rows(route_backend(self.directory, key))
        return [stats_from_row(row) for row in rows]

    def open_sessions(self, key: str) -> dict[str, int]:
        """Current sessions per server of the route, in the current worker *and* in old
        workers still finishing requests after a reload (whose counters ``stats`` misses)."""
        with locked(self.directory):
            backend = route_backend(self.directory, key)
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

        Reloads only if the config's frontends or ports changed (new routes take spares:
        no change) and keeps the old state if HAProxy rejects the new config; otherwise
        the state is saved and servers, weights and states converge through the runtime
        API, so stats counters survive.
        """
        check_unique(routes)
        with locked(self.directory):
            old = load_state(self.directory)
            new = resolve_ports(routes, old, bind_host=self.bind_host, port_range=self.port_range)
            if not self.process.is_running():
                self._save(new)
            elif spares.frontends(new) != spares.frontends(old) or self._backends_differ(new):
                self._apply_config(new)
            else:
                self._save(new)
                for key, route_state in new.routes.items():
                    converge_route(self.api, route_state.backend(key), route_state.servers)
                    if key not in old.routes:
                        self.hosts.repoint(key, route_state.backend(key))
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
            self.api.change(f"set server {route_state.backend(key)}/{name} {what}")
            route_state.update(name, **changes)
            self._save_route(key, route_state)

    def _from_spare(self, route: Route) -> Route | None:
        """Route ``route`` through a spare the running worker has (O(1) in routes: the
        pool's file and the route's); None if none fits."""
        pool = load_spares(self.directory)
        spare = spares.take(pool, route.listen_port)
        if spare is None or not self._serves(spare.backend(route.key)):
            return None  # not one HAProxy started from an older config has
        save_spares(self.directory, pool)  # first: a crash never leaves a slot in two files
        self.config_files.write_spares(pool)
        self._save_route(route.key, spare)
        self.hosts.repoint(route.key, spare.backend(route.key))
        return Route(route.key, spare.listen_port)

    def _serves(self, backend: str) -> bool:
        """Whether the running worker has ``backend`` (asked by name: O(1) in routes)."""
        try:
            self.api.server_state_rows(backend)
        except RouterError as exc:
            if not exc.answer:  # unreachable, not "no such backend"
                raise
            return False
        return True

    def _apply_config(self, state: DesiredState) -> None:
        """Write the config of ``state`` and reload (an empty spare pool gets a batch)."""
        spares.apply_with_spares(
            state, self._reload_with, self.spare_routes, self.bind_host, self.port_range
        )

    def _reload_with(self, state: DesiredState) -> None:  # on failure the old config stays
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
            HostFiles(self.directory).write(state.hosts, state.backend)
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
                    target = f"{route_state.backend(key)}/{server.name}"
                    self.api.change(f"set server {target} state drain")
                    self.api.change(f"set server {target} weight {server.weight}")

    def _backends_differ(self, state: DesiredState) -> bool:
        ours = {b for b in self.api.backends() if spares.is_route_backend(b)}
        return ours != spares.backends(state)

    def _free_port(self, state: DesiredState, key: str) -> int:
        del key  # a new route's: every port of the state is taken
        return allocate_port(self.bind_host, self.port_range, spares.ports_in_use(state))


def _as_router(router: HAProxyRouter) -> Router:  # mypy proves it implements Router
    return router
