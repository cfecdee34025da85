"""Host-based routing on the shared HTTP/HTTPS listeners, changed without a reload.

``HostRouting.sync`` makes HAProxy route exactly the wanted hostnames to their routes,
serve the wanted certificates, and redirect/HSTS the wanted hostnames: map entries with
``add/set/del map`` and certificates with ``new/set/commit ssl cert`` and
``add/del ssl crt-list`` on the runtime API, so open connections are never dropped. The
same table is saved in state.json and the files HAProxy reads at its next start.
HTTP-01 answers go into the ``acme.map`` the same way (``publish``/``withdraw``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from shipway.router.base import RouterError
from shipway.router.haproxy_config import ConfigOptions
from shipway.router.host_files import HostFiles, fingerprint
from shipway.router.runtime_api import RuntimeAPI
from shipway.router.state import (
    HostTable,
    load_hosts,
    locked,
    route_backend,
    save_hosts,
    write_atomic,
)

_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)+$"
)
_TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


@dataclass
class WantedHosts:
    """What the router should serve by hostname (certificates: chain + key, PEM)."""

    routes: dict[str, str] = field(default_factory=dict)  # hostname → route key, preferred first
    certificates: dict[str, str] = field(default_factory=dict)
    redirects: set[str] = field(default_factory=set)
    hsts: set[str] = field(default_factory=set)

    def __repr__(self) -> str:  # never the keys
        return f"WantedHosts({len(self.routes)} hosts, {len(self.certificates)} certificates)"


@dataclass(frozen=True)
class HostChanges:
    """What one ``sync`` changed."""

    routed: list[str]
    unrouted: list[str]
    installed: list[str]
    removed_certificates: list[str]

    @property
    def changed(self) -> bool:
        return bool(self.routed or self.unrouted or self.installed or self.removed_certificates)


class HostRouting:
    """The host table of one router folder and its running HAProxy."""

    def __init__(
        self,
        *,
        options: ConfigOptions,
        api: RuntimeAPI,
        is_running: Callable[[], bool],
        public_host: str = "",
    ) -> None:
        self.options, self.api, self.is_running = options, api, is_running
        self.files = HostFiles(options.directory)
        self.public_host = public_host

    @property
    def enabled(self) -> bool:
        """Whether the shared listeners exist (SHIPWAY_ROUTER_HTTP_PORT / _HTTPS_PORT)."""
        return bool(self.options.http_port or self.options.https_port)

    def table(self) -> HostTable:
        with locked(self.options.directory):
            return load_hosts(self.options.directory)

    def sync(self, wanted: WantedHosts) -> HostChanges:
        """Converge HAProxy and the saved table to ``wanted`` (runtime API only)."""
        directory = self.options.directory
        for host in {*wanted.routes, *wanted.certificates, *wanted.redirects, *wanted.hsts}:
            if not _HOSTNAME.match(host):
                raise RouterError(f"not a hostname the router can route: {host!r}")
        with locked(directory):
            have = load_hosts(directory)
            live = self.enabled and self.is_running()
            self.files.certs.mkdir(mode=0o700, parents=True, exist_ok=True)
            installed, removed = [], []
            certificates = dict(have.certificates)
            for host, pem in wanted.certificates.items():
                digest = fingerprint(pem)
                if certificates.get(host) != digest:
                    write_atomic(self.files.cert_path(host), pem, mode=0o600)
                    if live:
                        self._install(host, pem, new=host not in certificates)
                    certificates[host] = digest
                    installed.append(host)
            for host in [h for h in certificates if h not in wanted.certificates]:
                if live:
                    self._uninstall(host)
                self.files.cert_path(host).unlink(missing_ok=True)
                del certificates[host]
                removed.append(host)
            backend = functools.cache(functools.partial(route_backend, directory))
            backends = {h: backend(k) for h, k in wanted.routes.items()}
            if live:
                old = {h: backend(k) for h, k in have.routes.items()}
                self._converge_map(self.files.hosts_map, old, backends)
                ones = dict.fromkeys
                self._converge_map(
                    self.files.redirect_map, ones(have.redirects, "1"), ones(wanted.redirects, "1")
                )
                self._converge_map(
                    self.files.hsts_map, ones(have.hsts, "1"), ones(wanted.hsts, "1")
                )
            table = HostTable(
                routes=dict(wanted.routes),
                certificates=certificates,
                redirects=sorted(wanted.redirects),
                hsts=sorted(wanted.hsts),
            )
            save_hosts(directory, table)
            self.files.write(table, backend)
        return HostChanges(
            routed=[h for h in wanted.routes if have.routes.get(h) != wanted.routes[h]],
            unrouted=[h for h in have.routes if h not in wanted.routes],
            installed=installed,
            removed_certificates=removed,
        )

    def repoint(self, key: str, backend: str) -> None:
        """Send the hostnames of route ``key`` to ``backend``, its new HAProxy backend (a
        spare it was just given). The caller holds the router lock."""
        table = load_hosts(self.options.directory)
        hosts = [h for h, k in table.routes.items() if k == key]
        if not hosts or not self.enabled:
            return
        if self.is_running():
            for host in hosts:
                self._del_map(self.files.hosts_map, host)
                self.api.change(f"add map {self.files.hosts_map} {host} {backend}")
        self.files.write_hosts_map(table, functools.partial(route_backend, self.options.directory))

    def publish(self, token: str, key_authorization: str) -> None:
        """Answer ``/.well-known/acme-challenge/<token>`` on the HTTP listener (the ACME
        issuer's ChallengeBoard)."""
        _check_token(token)
        _check_token(key_authorization.replace(".", ""))
        with locked(self.options.directory):
            self._require_live()
            self._del_map(self.files.acme_map, token)
            self.api.change(f"add map {self.files.acme_map} {token} {key_authorization}")

    def withdraw(self, token: str) -> None:
        """Stop answering the challenge ``token``."""
        _check_token(token)
        with locked(self.options.directory):
            if self.enabled and self.is_running():
                self._del_map(self.files.acme_map, token)

    def url(self, key: str) -> str | None:
        """``https://host`` of the route's first hostname with a certificate, else
        ``http://host`` of its first hostname; None without listeners or hostnames."""
        table = self.table()
        hosts = [h for h, k in table.routes.items() if k == key]
        if not self.enabled or not hosts:
            return None
        secured = [h for h in hosts if h in table.certificates]
        if secured and self.options.https_port:
            port = self.options.https_port
            return f"https://{secured[0]}" + ("" if port == 443 else f":{port}")
        if not self.options.http_port:
            return None
        port = self.options.http_port
        return f"http://{hosts[0]}" + ("" if port == 80 else f":{port}")

    # -- runtime API -----------------------------------------------------------------

    def _require_live(self) -> None:
        if not self.enabled:
            raise RouterError("host routing is off: set SHIPWAY_ROUTER_HTTP_PORT")
        if not self.is_running():
            raise RouterError(f"HAProxy is not running (router {self.options.directory})")

    def _converge_map(self, path: object, have: dict[str, str], want: dict[str, str]) -> None:
        for key in have.keys() - want.keys():
            self._del_map(path, key)
        for key, value in want.items():
            if key not in have:
                self._del_map(path, key)  # a leftover of a failed sync
                self.api.change(f"add map {path} {key} {value}")
            elif have[key] != value:
                self.api.change(f"set map {path} {key} {value}")

    def _del_map(self, path: object, key: str) -> None:
        answer = self.api.send(f"del map {path} {key}").strip()
        if answer not in ("", "Key not found."):
            raise RouterError(f"HAProxy refused to delete {key} from {path}: {answer}")

    def _install(self, host: str, pem: str, *, new: bool) -> None:
        path = self.files.cert_path(host)
        if new:
            self._ssl(f"new ssl cert {path}", expect="New empty certificate store", ok_if="already")
        self._ssl(f"set ssl cert {path}", expect="Transaction", payload=pem)
        self._ssl(f"commit ssl cert {path}", expect="Success!")
        if new:
            self._ssl(
                f"add ssl crt-list {self.files.crt_list} {path}",
                expect="Success!",
                ok_if="already exists",
            )

    def _uninstall(self, host: str) -> None:
        path = self.files.cert_path(host)
        self._ssl(f"del ssl crt-list {self.files.crt_list} {path}", expect="deleted", ok_if="not")
        self._ssl(f"del ssl cert {path}", expect="deleted", ok_if="not")

    def _ssl(
        self, command: str, *, expect: str, payload: str | None = None, ok_if: str = ""
    ) -> None:
        answer = self.api.send(command, payload=payload).strip()
        if expect in answer or (ok_if and ok_if in answer):
            return
        raise RouterError(f"HAProxy refused {command!r}: {answer}", command=command, answer=answer)


def _check_token(text: str) -> None:
    if not text or not set(text) <= _TOKEN_CHARS:
        raise RouterError("an ACME token is base64url characters only")
