"""Host-based routing on one HTTP and one HTTPS listener, against a real HAProxy: routes by
Host and SNI, an unknown host's 404 page, certificates installed and replaced through the
runtime API while traffic flows (no reload, no failed request), redirects, HSTS and ACME
challenge answers."""

from __future__ import annotations

import random
import shutil
import ssl
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from shipway.router import HAProxyRouter, Route, RouterError, Server
from shipway.router.hosts import WantedHosts
from tests.support.certs import ThrowawayCA, served_certificate
from tests.support.port_servers import PortServers
from tests.support.services import free_port
from tests.test_router import Backend, backends, port_range  # noqa: F401 (fixtures)

pytestmark = pytest.mark.skipif(
    shutil.which("haproxy") is None, reason="haproxy is not installed (scripts/provision.sh)"
)


@pytest.fixture
def router(port_range: tuple[int, int]) -> Iterator[HAProxyRouter]:  # noqa: F811
    folder = Path(tempfile.mkdtemp(prefix="swh-"))
    router = HAProxyRouter(
        folder / "router",
        port_range=port_range,
        daemon=False,
        http_port=free_port(),
        https_port=free_port(),
    )
    router.start()
    try:
        yield router
    finally:
        router.stop()
        shutil.rmtree(folder, ignore_errors=True)


def http(router: HAProxyRouter, host: str, path: str = "/") -> httpx.Response:
    url = f"http://127.0.0.1:{router.options.http_port}{path}"
    return httpx.get(url, headers={"Host": host}, timeout=10)


def https(router: HAProxyRouter, host: str, ca: ThrowawayCA) -> httpx.Response:
    context = ssl.create_default_context(cadata=ca.pem)
    url = f"https://127.0.0.1:{router.options.https_port}/"
    with httpx.Client(verify=context, timeout=10) as client:
        return client.get(url, headers={"Host": host}, extensions={"sni_hostname": host})


def two_routes(router: HAProxyRouter, backends: Callable[..., Backend]) -> None:  # noqa: F811
    for key, name in (("dep_a--production", "A"), ("dep_b--production", "B")):
        router.ensure_route(Route(key))
        router.add_server(key, backends(name).server())


def reloads(router: HAProxyRouter) -> int:
    return router.process.master.status().reloads


def test_hosts_route_by_host_header_and_unknown_hosts_get_a_404_page(
    router: HAProxyRouter,
    backends: Callable[..., Backend],  # noqa: F811
) -> None:
    two_routes(router, backends)
    before = reloads(router)
    changes = router.hosts.sync(
        WantedHosts(
            routes={"a.example.test": "dep_a--production", "b.example.test": "dep_b--production"}
        )
    )
    assert changes.routed == ["a.example.test", "b.example.test"]
    assert http(router, "a.example.test").text == "A"
    assert http(router, "B.Example.Test:8080").text == "B"  # case and port ignored
    missing = http(router, "nobody.example.test")
    assert missing.status_code == 404 and "No site at this address" in missing.text
    # Move a host, drop another: the runtime API only.
    router.hosts.sync(WantedHosts(routes={"a.example.test": "dep_b--production"}))
    assert http(router, "a.example.test").text == "B"
    assert http(router, "b.example.test").status_code == 404
    assert reloads(router) == before
    assert router.hosts.url("dep_b--production") == (
        f"http://a.example.test:{router.options.http_port}"
    )


def test_the_table_survives_a_restart(
    router: HAProxyRouter,
    backends: Callable[..., Backend],  # noqa: F811
) -> None:
    two_routes(router, backends)
    ca = ThrowawayCA()
    chain, key = ca.issue(["a.example.test"])
    router.hosts.sync(
        WantedHosts(
            routes={"a.example.test": "dep_a--production"},
            certificates={"a.example.test": chain + key},
        )
    )
    router.restart()
    assert http(router, "a.example.test").text == "A"
    assert https(router, "a.example.test", ca).text == "A"
    pem = router.hosts.files.cert_path("a.example.test")
    assert pem.stat().st_mode & 0o777 == 0o600
    assert "PRIVATE KEY" not in (router.directory / "state.json").read_text()


def test_certificates_are_installed_and_replaced_under_traffic_without_a_reload(
    router: HAProxyRouter,
    backends: Callable[..., Backend],  # noqa: F811
) -> None:
    two_routes(router, backends)
    ca = ThrowawayCA()
    routes = {"a.example.test": "dep_a--production", "b.example.test": "dep_b--production"}
    router.hosts.sync(WantedHosts(routes=routes))
    before = reloads(router)
    with pytest.raises(httpx.ConnectError):  # only the default (self-signed) certificate yet
        https(router, "a.example.test", ca)

    first = ca.issue(["a.example.test"])
    router.hosts.sync(WantedHosts(routes=routes, certificates={"a.example.test": "".join(first)}))
    assert https(router, "a.example.test", ca).text == "A"
    assert router.public_url("dep_a--production") == (
        f"https://a.example.test:{router.options.https_port}"
    )

    failures: list[str] = []
    served: list[str] = []
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            try:
                served.append(https(router, "a.example.test", ca).text)
            except httpx.HTTPError as error:
                failures.append(repr(error))

    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        for _ in range(5):  # renewals: a new key and certificate each time
            renewed = ca.issue(["a.example.test"])
            router.hosts.sync(
                WantedHosts(routes=routes, certificates={"a.example.test": "".join(renewed)})
            )
    finally:
        stop.set()
        thread.join(timeout=30)
    assert failures == [] and served and set(served) == {"A"}
    leaf = served_certificate(router.options.https_port, "a.example.test")
    assert leaf in renewed[0]  # the last certificate is the one served
    assert reloads(router) == before

    router.hosts.sync(WantedHosts(routes=routes))  # certificate removed
    with pytest.raises(httpx.ConnectError):
        https(router, "a.example.test", ca)


def test_redirect_hsts_and_acme_challenges(
    router: HAProxyRouter,
    backends: Callable[..., Backend],  # noqa: F811
) -> None:
    two_routes(router, backends)
    ca = ThrowawayCA()
    routes = {"a.example.test": "dep_a--production", "b.example.test": "dep_b--production"}
    router.hosts.sync(
        WantedHosts(
            routes=routes,
            certificates={"a.example.test": "".join(ca.issue(["a.example.test"]))},
            redirects={"a.example.test"},
            hsts={"a.example.test"},
        )
    )
    moved = http(router, "a.example.test", "/page?x=1")
    assert moved.status_code == 308
    assert moved.headers["location"] == (
        f"https://a.example.test:{router.options.https_port}/page?x=1"
    )
    assert http(router, "b.example.test").text == "B"  # no redirect without asking
    secure = https(router, "a.example.test", ca)
    assert secure.headers["strict-transport-security"] == "max-age=31536000"

    router.hosts.publish("tok-EN_1", "tok-EN_1.thumbprint")
    answer = http(router, "a.example.test", "/.well-known/acme-challenge/tok-EN_1")
    assert answer.status_code == 200 and answer.text == "tok-EN_1.thumbprint"
    router.hosts.withdraw("tok-EN_1")
    assert http(router, "b.example.test", "/.well-known/acme-challenge/tok-EN_1").text == "B"
    with pytest.raises(RouterError):
        router.hosts.publish("bad token", "x")
    with pytest.raises(RouterError):
        router.hosts.sync(WantedHosts(routes={"bad host;": "dep_a--production"}))


def test_a_thousand_environments_on_one_listener_each_reach_their_own_replica() -> None:
    """1,000 routes, 1,000 hostnames on the one HTTP listener: every hostname reaches its own
    server (none another's), and adding the 1,000 hostnames is no reload."""
    count = 1000
    echo = PortServers(count)
    folder = Path(tempfile.mkdtemp(prefix="swk-"))
    low = random.randrange(33000, 58000, 100)
    router = HAProxyRouter(
        folder / "router",
        port_range=(low, low + 1199),
        daemon=False,
        http_port=free_port(),
        https_port=free_port(),
    )
    try:
        router.start()
        keys = [f"dep_{i:04d}--production" for i in range(count)]
        router.sync(
            {
                Route(k): [Server("r1", "127.0.0.1", p)]
                for k, p in zip(keys, echo.ports, strict=True)
            }
        )
        before = reloads(router)
        hosts = {f"production.app-{i:04d}.shipway.localhost": k for i, k in enumerate(keys)}
        router.hosts.sync(WantedHosts(routes=hosts))
        assert reloads(router) == before
        wrong = {}
        with httpx.Client(timeout=10) as client:
            for host, port in zip(hosts, echo.ports, strict=True):
                answer = client.get(
                    f"http://127.0.0.1:{router.options.http_port}/", headers={"Host": host}
                )
                if answer.text != str(port):
                    wrong[host] = (answer.status_code, answer.text[:40])
        assert wrong == {}
    finally:
        router.stop()
        echo.close()
        shutil.rmtree(folder, ignore_errors=True)
