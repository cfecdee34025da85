"""New routes from the spare pool (router/spares.py), against a real HAProxy: a new
environment served without a reload, kept across a reload and a restart, reached by
hostname, and a pool that grows by one reload when it runs out."""

from __future__ import annotations

import json
import shutil
import socket
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from shipway.router import HAProxyRouter, Route
from shipway.router.hosts import WantedHosts
from shipway.router.runtime_api import ProcStatus
from tests.support.services import free_port
from tests.test_router import (  # noqa: F401 (fixtures)
    KEY,
    Backend,
    Traffic,
    backends,
    get,
    make_router,
    port_range,
    router,
    router_dir,
)

pytestmark = pytest.mark.skipif(
    shutil.which("haproxy") is None, reason="haproxy is not installed (scripts/provision.sh)"
)


def status(router: HAProxyRouter) -> ProcStatus:  # noqa: F811
    return router.process.master.status()


def slot_of(router: HAProxyRouter, key: str) -> int:  # noqa: F811
    return int(json.loads((router.directory / "routes" / f"{key}.json").read_text())["slot"])


def started_with_spares(make: Callable[[], HAProxyRouter]) -> HAProxyRouter:
    """A started router with one route (a reload, which declared spares)."""
    made = make()
    made.start()
    made.ensure_route(Route(KEY))
    return made


def test_a_new_route_takes_a_spare_without_a_reload(
    router: HAProxyRouter,  # noqa: F811
    backends: Callable[..., Backend],  # noqa: F811
) -> None:
    router.ensure_route(Route(KEY))  # the first route: a reload, which declares spares
    router.add_server(KEY, backends("a").server())
    before = status(router)
    uptime = router.api.send("show info")
    traffic = Traffic(router.public_url(KEY))

    route = router.ensure_route(Route("dep_y--staging"))
    router.add_server(route.key, backends("y").server())

    assert traffic.stop() == []
    after = status(router)
    assert (after.reloads, after.workers, after.old_workers) == (before.reloads, before.workers, [])
    assert "Pid: " in uptime and _line(uptime, "Pid") == _line(router.api.send("show info"), "Pid")
    low, high = router.port_range
    assert low <= route.listen_port <= high
    assert get(router.public_url(route.key)) == (200, "y")
    assert get(router.public_url(KEY)) == (200, "a")
    assert router.ensure_route(Route(route.key)) == route  # idempotent
    assert [s.name for s in router.servers(route.key)] == ["y"]
    assert [s.req_tot for s in router.stats(route.key)] == [1]
    assert slot_of(router, route.key) > 0


def test_a_route_from_a_spare_survives_a_reload_and_a_restart(
    make_router: Callable[[], HAProxyRouter],  # noqa: F811
    backends: Callable[..., Backend],  # noqa: F811
) -> None:
    first = started_with_spares(make_router)
    other = first.ensure_route(Route("dep_y--staging"))
    slot = slot_of(first, other.key)
    first.add_server(other.key, backends("y").server())
    first.add_server(other.key, backends("z").server(weight=0))
    reloads = status(first).reloads

    first.reload()  # same frontend, same backend name, same servers
    assert status(first).reloads == reloads + 1
    assert get(first.public_url(other.key)) == (200, "y")

    first.stop()
    again = make_router()
    again.start()
    assert again.ensure_route(Route(other.key)) == other
    assert slot_of(again, other.key) == slot
    assert {(s.name, s.weight) for s in again.servers(other.key)} == {("y", 100), ("z", 0)}
    assert get(again.public_url(other.key)) == (200, "y")
    third = again.ensure_route(Route("dep_w--staging"))  # the spares were declared again
    assert status(again).reloads == 0
    again.add_server(third.key, backends("w").server())
    assert get(again.public_url(third.key)) == (200, "w")


def test_an_empty_pool_grows_by_one_reload(
    router_dir: Path,  # noqa: F811
    port_range: tuple[int, int],  # noqa: F811
    backends: Callable[..., Backend],  # noqa: F811
) -> None:
    pooled = HAProxyRouter(router_dir, port_range=port_range, daemon=False, spare_routes=2)
    pooled.start()
    try:
        reloads = []
        for index in range(6):
            key = f"dep_{index}--production"
            pooled.ensure_route(Route(key))
            pooled.add_server(key, backends(f"s{index}").server())
            reloads.append(status(pooled).reloads)
        # a reload for the first (2 spares declared), the 4th (2 more); none for the others
        assert reloads == [1, 1, 1, 2, 2, 2]
        for index in range(6):
            assert get(pooled.public_url(f"dep_{index}--production")) == (200, f"s{index}")
        ports = [pooled.ensure_route(Route(f"dep_{i}--production")).listen_port for i in range(6)]
        assert len(set(ports)) == 6
    finally:
        pooled.stop()


def test_sync_gives_new_routes_spares_and_hostnames_follow_them(
    router_dir: Path,  # noqa: F811
    port_range: tuple[int, int],  # noqa: F811
    backends: Callable[..., Backend],  # noqa: F811
) -> None:
    pooled = HAProxyRouter(router_dir, port_range=port_range, daemon=False, http_port=free_port())
    pooled.start()
    try:
        a, b = backends("A"), backends("B")
        pooled.sync({Route("dep_a--production"): [a.server()]})  # a reload: spares declared
        reloads = status(pooled).reloads

        routes = {
            Route("dep_a--production"): [a.server()],
            Route("dep_b--production"): [b.server()],
        }
        pooled.sync(routes)
        pooled.hosts.sync(
            WantedHosts(
                routes={
                    "a.example.test": "dep_a--production",
                    "b.example.test": "dep_b--production",
                }
            )
        )

        assert status(pooled).reloads == reloads
        assert slot_of(pooled, "dep_b--production") > 0
        for host, name in (("a.example.test", "A"), ("b.example.test", "B")):
            url = f"http://127.0.0.1:{pooled.options.http_port}/"
            assert httpx.get(url, headers={"Host": host}, timeout=10).text == name
        pooled.reload()  # hosts.map written with the spare's backend name
        url = f"http://127.0.0.1:{pooled.options.http_port}/"
        assert httpx.get(url, headers={"Host": "b.example.test"}, timeout=10).text == "B"
    finally:
        pooled.stop()


def _line(info: str, name: str) -> str:
    return next(line for line in info.splitlines() if line.startswith(f"{name}: "))


def test_a_spare_whose_port_was_taken_while_stopped_is_dropped_at_start(
    make_router: Callable[[], HAProxyRouter],  # noqa: F811
    backends: Callable[..., Backend],  # noqa: F811
) -> None:
    first = started_with_spares(make_router)
    pool = json.loads((first.directory / "spares.json").read_text())["slots"]
    first.stop()
    slot, port = next(iter(pool.items()))
    holder = socket.socket()
    holder.bind(("127.0.0.1", port))
    holder.listen()
    try:
        again = make_router()
        again.start()  # HAProxy would refuse to start with that port in its config

        left = json.loads((again.directory / "spares.json").read_text())["slots"]
        assert slot not in left and set(left) == set(pool) - {slot}
        route = again.ensure_route(Route("dep_y--staging"))
        assert route.listen_port != port and status(again).reloads == 0
        again.add_server(route.key, backends("y").server())
        assert get(again.public_url(route.key)) == (200, "y")
    finally:
        holder.close()


def test_a_spare_port_taken_before_haproxy_binds_it_costs_no_route(
    router: HAProxyRouter,  # noqa: F811
    backends: Callable[..., Backend],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another router sharing the range binds a new spare's port between the probe and the
    reload: the reload is tried again without the new spares, the route is made."""
    holders: list[socket.socket] = []
    check = router.process.check

    def taken_meanwhile(paths: list[Path]) -> None:  # haproxy -c: after the probe, before the bind
        check(paths)
        spare_file = paths[-1] / "-spares.cfg"
        if not holders and spare_file.exists():
            port = int(spare_file.read_text().split("bind 127.0.0.1:")[1].split()[0])
            holders.append(socket.create_server(("127.0.0.1", port)))

    monkeypatch.setattr(router.process, "check", taken_meanwhile)
    try:
        route = router.ensure_route(Route(KEY))  # the first route: a reload declaring spares
        router.add_server(KEY, backends("a").server())

        assert get(router.public_url(KEY)) == (200, "a")
        held = holders[0].getsockname()[1]
        assert route.listen_port != held
        pool = json.loads((router.directory / "spares.json").read_text())["slots"]
        assert held not in pool.values()
        assert status(router).failed_reloads == 0
        other = router.ensure_route(Route("dep_y--staging"))  # the pool grows at this reload
        router.add_server(other.key, backends("y").server())
        assert get(router.public_url(other.key)) == (200, "y")
    finally:
        for holder in holders:
            holder.close()
