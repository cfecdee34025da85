"""External router mode: `shipway router run` owns HAProxy, other processes only use the
sockets of the router folder (as the API, worker and relay containers of
docker-compose.yml and deploy/stack.yml do). Real HAProxy, real HTTP backends."""

from __future__ import annotations

import threading
import urllib.request
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from shipway.config import Settings
from shipway.router import HAProxyRouter, Route, RouterError
from shipway.router.serve import run_router
from shipway.runtime.docker_inspect import replica_of
from tests.support.processes import wait_until
from tests.test_router import KEY, Backend, backends, port_range, router_dir

__all__ = ["backends", "port_range", "router_dir"]  # fixtures shared with test_router

pytestmark = pytest.mark.skipif(
    __import__("shutil").which("haproxy") is None, reason="haproxy is not installed"
)


class Owner:
    """`shipway router run` in a thread (as in its own container)."""

    def __init__(self, settings: Settings) -> None:
        self.settings, self.stop = settings, threading.Event()
        self.result: list[bool] = []
        self.thread = threading.Thread(
            target=lambda: self.result.append(run_router(stop=self.stop, settings=settings))
        )
        self.thread.start()

    def end(self) -> bool:
        self.stop.set()
        self.thread.join(timeout=30)
        return self.result == [True]


@pytest.fixture
def owner(router_dir: Path, port_range: tuple[int, int]) -> Iterator[Callable[[], Owner]]:
    settings = Settings(
        data_dir=router_dir.parent,
        router_dir=router_dir,
        router_port_range=f"{port_range[0]}-{port_range[1]}",
    )
    started: list[Owner] = []

    def start() -> Owner:
        started.append(Owner(settings))
        return started[-1]

    yield start
    for running in started:
        running.end()


def client(router_dir: Path, port_range: tuple[int, int]) -> HAProxyRouter:
    router = HAProxyRouter(router_dir, port_range=port_range, timeout=1.0)
    router.process.external = True
    return router


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as answer:
        return str(answer.read().decode())


def answers(url: str, body: str) -> bool:
    """Whether ``url`` answers ``body`` now (False while it refuses or fails)."""
    try:
        return fetch(url) == body
    except OSError:
        return False


def test_an_external_router_is_driven_through_its_sockets_and_never_started_here(
    owner: Callable[[], Owner],
    router_dir: Path,
    port_range: tuple[int, int],
    backends: Callable[..., Backend],
) -> None:
    worker = client(router_dir, port_range)
    with pytest.raises(RouterError, match="does not answer"):
        worker.start()  # nobody runs it: waited for, never started here
    assert not (router_dir / "haproxy.pid").exists()

    first = owner()
    wait_until(worker.is_running, timeout=15, message="the owner's HAProxy never answered")
    route = worker.ensure_route(Route(KEY))  # a config reload through the master socket
    worker.add_server(KEY, backends("a").server())
    url = worker.public_url(KEY)
    assert fetch(url) == "a"
    assert route.listen_port and url.endswith(f":{route.listen_port}")

    worker.stop()  # not ours to stop
    assert worker.is_running() and fetch(url) == "a"

    assert first.end()
    assert not worker.is_running()
    second = owner()  # e.g. the router container restarted: routes restored from the state
    wait_until(worker.is_running, timeout=15, message="the second owner never answered")
    wait_until(lambda: fetch(url) == "a", timeout=10, message="route not restored")
    assert second.end()


def test_a_replica_on_the_replica_network_is_reached_at_its_own_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from shipway.config import get_settings

    attrs: dict[str, Any] = {
        "Id": "c1",
        "Name": "/replica",
        "State": {"Status": "running"},
        "Config": {"Labels": {}, "ExposedPorts": {"8080/tcp": {}}},
        "NetworkSettings": {
            "Ports": {"8080/tcp": None},
            "Networks": {"shipway": {"IPAddress": "172.30.0.7"}},
        },
    }
    monkeypatch.setenv("SHIPWAY_REPLICA_NETWORK", "shipway")
    get_settings.cache_clear()
    try:
        endpoint = replica_of(attrs).endpoint
        assert endpoint is not None and (endpoint.address, endpoint.port) == ("172.30.0.7", 8080)
        attrs["NetworkSettings"]["Networks"] = {}  # stopped: no address, no endpoint
        assert replica_of(attrs).endpoint is None
    finally:
        monkeypatch.delenv("SHIPWAY_REPLICA_NETWORK")
        get_settings.cache_clear()
    published = {"8080/tcp": [{"HostIp": "0.0.0.0", "HostPort": "32768"}]}
    attrs["NetworkSettings"]["Ports"] = published
    endpoint = replica_of(attrs).endpoint
    assert endpoint is not None and (endpoint.address, endpoint.port) == ("127.0.0.1", 32768)


def test_an_external_router_gives_a_new_route_a_spare_and_keeps_it_across_restarts(
    owner: Callable[[], Owner],
    router_dir: Path,
    port_range: tuple[int, int],
    backends: Callable[..., Backend],
) -> None:
    worker = client(router_dir, port_range)
    first = owner()
    wait_until(worker.is_running, timeout=15, message="the owner's HAProxy never answered")
    worker.ensure_route(Route(KEY))  # a reload through the master socket: spares declared
    worker.add_server(KEY, backends("a").server())
    reloads = worker.process.master.status().reloads

    other = worker.ensure_route(Route("dep_y--staging"))  # a spare of the owner's HAProxy
    worker.add_server(other.key, backends("y").server())
    assert worker.process.master.status().reloads == reloads
    assert fetch(worker.public_url(other.key)) == "y"

    assert first.end()
    second = owner()  # the router container restarted: the spare's route under its names
    wait_until(worker.is_running, timeout=15, message="the second owner never answered")
    for key, name in ((KEY, "a"), (other.key, "y")):
        url = worker.public_url(key)
        wait_until(partial(answers, url, name), timeout=10, message=f"{key} not restored")
    third = worker.ensure_route(Route("dep_w--staging"))  # the spares came back too
    worker.add_server(third.key, backends("w").server())
    assert worker.process.master.status().reloads == 0
    assert fetch(worker.public_url(third.key)) == "w"
    assert second.end()
