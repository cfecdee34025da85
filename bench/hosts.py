"""Host-based routing and HTTPS on one listener, against a real HAProxy (issue 15).

    .venv/bin/python -m bench.hosts [--quick]

1. A traffic switch (``releases.traffic.switch_traffic``: the new server added, the old
   one drained, through the runtime API) on a router carrying 1,000 environments and
   hostnames, beside the same switch on a router carrying 10. Target: at most 1.2 times.
2. HTTPS vs plain HTTP through the same HAProxy and server: a request on a new connection
   (the TLS handshake included) and on a kept-alive one. For information.
3. Installing a renewed certificate (``router.hosts.sync``: ``set/commit ssl cert`` on the
   runtime API) until HAProxy serves it, beside a seamless HAProxy reload (the other way to
   load one). For information.
"""

from __future__ import annotations

import random
import shutil
import socket
import ssl
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from bench.common import Section, arguments, in_turn, median, ms, print_section
from shipway.releases.traffic import switch_traffic
from shipway.router import HAProxyRouter, Route, Server
from shipway.router.hosts import WantedHosts
from tests.support.certs import ThrowawayCA, served_certificate
from tests.support.port_servers import PortServers
from tests.support.services import free_port


@contextmanager
def router_with(
    environments: int, backends: PortServers, *, port_low: int | None = None
) -> Iterator[HAProxyRouter]:
    """A started router with ``environments`` routes and hostnames (one server each); its
    listen ports from ``port_low`` (default: a random block)."""
    folder = Path(tempfile.mkdtemp(prefix="swb-"))
    low = port_low or random.randrange(33000, 58000, 100)
    router = HAProxyRouter(
        folder / "router",
        port_range=(low, low + environments + 199),
        daemon=False,
        http_port=free_port(),
        https_port=free_port(),
    )
    try:
        router.start()
        keys = [f"dep_{i:04d}--production" for i in range(environments)]
        router.sync(
            {
                Route(key): [Server("r0", "127.0.0.1", backends.ports[i % len(backends.ports)])]
                for i, key in enumerate(keys)
            }
        )
        router.hosts.sync(
            WantedHosts(
                routes={f"production.app-{i:04d}.bench.localhost": k for i, k in enumerate(keys)}
            )
        )
        yield router
    finally:
        router.stop()
        shutil.rmtree(folder, ignore_errors=True)


def switch_times(
    routers: list[HAProxyRouter], backends: PortServers, rounds: int
) -> list[list[float]]:
    """Seconds per switch of one route between two servers, alternating, on each router:
    one switch on each in turn (the order rotated every round), so that a busy moment of
    the machine hits each alike."""
    key = "dep_0000--production"
    times: list[list[float]] = [[] for _ in routers]
    for n in range(rounds):
        server = Server(f"r{n + 1}", "127.0.0.1", backends.ports[(n + 1) % len(backends.ports)])
        for router, measured in in_turn(list(zip(routers, times, strict=True)), n):
            started = time.perf_counter()
            switch_traffic(router, key, to=[server])
            measured.append(time.perf_counter() - started)
            router.remove_server(key, f"r{n}")  # the drained one, as retire does (not timed)
    return times


def request_times(router: HAProxyRouter, ca: ThrowawayCA, rounds: int) -> dict[str, float]:
    """Median request time over HTTP and HTTPS, new connections and kept-alive ones."""
    host = "production.app-0000.bench.localhost"
    context = ssl.create_default_context(cadata=ca.pem)
    plain = f"http://127.0.0.1:{router.options.http_port}/"
    secure = f"https://127.0.0.1:{router.options.https_port}/"
    headers = {"Host": host}
    sni = {"sni_hostname": host}
    names = ("http new", "https new", "http kept", "https kept")
    results: dict[str, list[float]] = {name: [] for name in names}
    with (
        httpx.Client(timeout=10) as kept_plain,
        httpx.Client(verify=context, timeout=10) as kept_tls,
    ):
        for _ in range(rounds):
            for name, call in (  # a new connection: a plain socket, with TLS or not
                ("http new", lambda: _once(router.options.http_port, host, None)),
                ("https new", lambda: _once(router.options.https_port, host, context)),
                ("http kept", lambda: kept_plain.get(plain, headers=headers).text),
                ("https kept", lambda: kept_tls.get(secure, headers=headers, extensions=sni).text),
            ):
                started = time.perf_counter()
                text = call()
                results[name].append(time.perf_counter() - started)
                assert text.isdigit(), text
    return {name: median(values) for name, values in results.items()}


def _once(port: int, host: str, context: ssl.SSLContext | None) -> str:
    """The body of one request on a new connection (TLS with SNI if ``context``). Raw
    sockets for both: httpx's plain-HTTP path waits out a delayed ACK (~30 ms) on loopback."""
    request = f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = context.wrap_socket(raw, server_hostname=host) if context else raw
        conn.sendall(request)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode().rpartition("\r\n\r\n")[2]


def install_times(
    router: HAProxyRouter, ca: ThrowawayCA, rounds: int
) -> tuple[list[float], list[float]]:
    """Seconds from ``hosts.sync`` with a new certificate until HAProxy serves it; and
    seconds of a seamless reload (the alternative), alternating."""
    host = "production.app-0000.bench.localhost"
    wanted = WantedHosts(routes=dict(router.hosts.table().routes))
    installs, reloads = [], []
    for _ in range(rounds):
        chain, key = ca.issue([host])
        wanted.certificates = {host: chain + key}
        leaf = chain.split("-----END CERTIFICATE-----")[0]
        started = time.perf_counter()
        router.hosts.sync(wanted)
        while leaf not in served_certificate(router.options.https_port, host):
            time.sleep(0.001)
        installs.append(time.perf_counter() - started)
        started = time.perf_counter()
        router.reload()
        reloads.append(time.perf_counter() - started)
    return installs, reloads


def run(quick: bool = False) -> Section:
    section = Section("hosts", "Host routing and HTTPS on one listener")
    big = 100 if quick else 1000
    rounds = 5 if quick else 60
    backends = PortServers(20)
    ca = ThrowawayCA()
    try:
        with router_with(10, backends) as router, router_with(big, backends) as crowded:
            few, many = switch_times([router, crowded], backends, rounds)
            chain, key = ca.issue(["production.app-0000.bench.localhost"])
            router.hosts.sync(
                WantedHosts(
                    routes=dict(router.hosts.table().routes),
                    certificates={"production.app-0000.bench.localhost": chain + key},
                )
            )
            latency = request_times(router, ca, rounds * 4)
            installs, reloads = install_times(router, ca, rounds)
        small, large = median(few), median(many)
        section.add(
            f"traffic switch, {big} environments on the listener",
            ms(large),
            baseline=f"{ms(small)} (10 environments)",
            ratio=large / small,
            target="≤ 1.2x",
            met=large / small <= 1.2,
        )
        for kind in ("new", "kept"):
            http, https = latency[f"http {kind}"], latency[f"https {kind}"]
            section.add(
                f"request over HTTPS, {'new connection' if kind == 'new' else 'kept-alive'}",
                ms(https),
                baseline=f"{ms(http)} (plain HTTP)",
                ratio=https / http,
                target="for information",
            )
        section.add(
            "install a renewed certificate until served (runtime API)",
            ms(median(installs)),
            baseline=f"{ms(median(reloads))} (a seamless HAProxy reload)",
            ratio=median(installs) / median(reloads),
            target="for information",
        )
        section.notes.append(
            f"median of {rounds} switches per size, the two routers switched in turn (one route "
            "switched between two servers: add the new one, drain the old one); the requests: "
            "median of "
            f"{rounds * 4} each, one server answering its port"
        )
    finally:
        backends.close()
    return section


if __name__ == "__main__":
    args = arguments(__doc__).parse_args()
    raise SystemExit(print_section(lambda: run(quick=args.quick)))
