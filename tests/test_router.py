"""HAProxyRouter against a real HAProxy and real HTTP backends (no fakes)."""

from __future__ import annotations

import http.server
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shipway.router import HAProxyRouter, Route, RouterError, Server, ServerState
from shipway.router.state import load_state
from tests.support.processes import wait_until

pytestmark = pytest.mark.skipif(
    shutil.which("haproxy") is None, reason="haproxy is not installed (scripts/provision.sh)"
)

KEY = "dep_x--production"


class Backend(http.server.ThreadingHTTPServer):
    """A tiny HTTP server answering its own name; ``/slow`` takes a second."""

    daemon_threads = True

    def __init__(self, name: str, status: int = 200) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.name, self.status = name, status
        threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def port(self) -> int:
        """The port it listens on."""
        return int(self.server_address[1])

    def server(self, weight: int = 100, state: ServerState = "ready") -> Server:
        """Its Server entry for the router."""
        return Server(self.name, "127.0.0.1", self.port, weight, state)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Backend

    def do_GET(self) -> None:
        if self.path == "/slow":
            time.sleep(1.0)
        body = self.server.name.encode()
        self.send_response(self.server.status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def get(url: str) -> tuple[int, str]:
    """Status and body of a GET (HTTP errors included)."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def refused(url: str) -> bool:
    """Whether nothing listens at ``url`` any more."""
    try:
        get(url)
    except urllib.error.URLError as exc:
        return isinstance(exc.reason, ConnectionRefusedError)
    except ConnectionError:
        return False
    return False


def names(url: str, count: int) -> Counter[str]:
    """Which backend answered each of ``count`` requests."""
    return Counter(get(url)[1] for _ in range(count))


class InFlight:
    """A ``/slow`` request running in a thread."""

    def __init__(self, url: str) -> None:
        self.result: tuple[int, str] | None = None
        self.thread = threading.Thread(target=self._run, args=(url + "/slow",))
        self.thread.start()

    def _run(self, url: str) -> None:
        self.result = get(url)

    def wait(self) -> tuple[int, str] | None:
        """Its status and body once done."""
        self.thread.join(timeout=15)
        return self.result


class Traffic:
    """Requests sent one after another from a thread until stopped."""

    def __init__(self, url: str) -> None:
        self.failures: list[str] = []
        self.count = 0
        self.running = True
        self.thread = threading.Thread(target=self._run, args=(url,))
        self.thread.start()

    def _run(self, url: str) -> None:
        while self.running:
            try:
                status, _ = get(url)
                if status != 200:
                    self.failures.append(f"HTTP {status}")
            except OSError as exc:
                self.failures.append(repr(exc))
            self.count += 1

    def stop(self) -> list[str]:
        """The failures seen (after at least a few requests)."""
        wait_until(lambda: self.count >= 5, timeout=10)
        self.running = False
        self.thread.join(timeout=15)
        return self.failures


def sessions(router: HAProxyRouter, key: str, name: str) -> int:
    """Current sessions of one server."""
    return next(s.scur for s in router.stats(key) if s.name == name)


@pytest.fixture
def backends() -> Iterator[Callable[..., Backend]]:
    """Start named backends; all stopped at the end."""
    started: list[Backend] = []

    def start(name: str, status: int = 200) -> Backend:
        backend = Backend(name, status)
        started.append(backend)
        return backend

    yield start
    for backend in started:
        backend.shutdown()
        backend.server_close()


@pytest.fixture
def router_dir() -> Iterator[Path]:
    """A short folder (unix socket paths are limited to 108 bytes)."""
    folder = Path(tempfile.mkdtemp(prefix="swr-"))
    yield folder / "router"
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def port_range() -> tuple[int, int]:
    """A random block of 100 ports below the ephemeral range, so parallel runs rarely meet."""
    low = random.randrange(21000, 32700, 100)
    return low, low + 99


@pytest.fixture
def make_router(
    router_dir: Path, port_range: tuple[int, int]
) -> Iterator[Callable[[], HAProxyRouter]]:
    """Routers on one state folder (like shipway restarting); HAProxy stopped at the end."""
    made: list[HAProxyRouter] = []

    def make() -> HAProxyRouter:
        router = HAProxyRouter(router_dir, port_range=port_range, daemon=False)
        made.append(router)
        return router

    yield make
    for router in made:
        router.stop()


@pytest.fixture
def router(make_router: Callable[[], HAProxyRouter]) -> HAProxyRouter:
    """A started router."""
    router = make_router()
    router.start()
    return router


def test_route_reaches_its_server(router: HAProxyRouter, backends: Callable[..., Backend]) -> None:
    route = router.ensure_route(Route(KEY))
    router.add_server(KEY, backends("a").server())

    low, high = router.port_range
    assert low <= route.listen_port <= high
    assert router.public_url(KEY) == f"http://127.0.0.1:{route.listen_port}"
    assert get(router.public_url(KEY)) == (200, "a")
    assert router.ensure_route(Route(KEY)) == route  # idempotent, no second port
    [server] = router.servers(KEY)
    assert (server.name, server.weight, server.state) == ("a", 100, "ready")


def test_weights_split_traffic(router: HAProxyRouter, backends: Callable[..., Backend]) -> None:
    router.ensure_route(Route(KEY))
    router.add_server(KEY, backends("heavy").server(weight=90))
    router.add_server(KEY, backends("light").server(weight=10))

    seen = names(router.public_url(KEY), 200)

    assert seen["light"] > 0
    assert seen["heavy"] > seen["light"]
    assert seen["heavy"] + seen["light"] == 200


def test_weight_zero_gets_no_new_requests(
    router: HAProxyRouter, backends: Callable[..., Backend]
) -> None:
    router.ensure_route(Route(KEY))
    router.add_server(KEY, backends("a").server())
    router.add_server(KEY, backends("b").server())
    assert set(names(router.public_url(KEY), 10)) == {"a", "b"}

    router.set_weight(KEY, "b", 0)

    assert names(router.public_url(KEY), 30) == Counter(a=30)
    assert {s.name: s.weight for s in router.servers(KEY)} == {"a": 100, "b": 0}
    assert load_state(router.directory).routes[KEY].server("b").weight == 0  # type: ignore[union-attr]


def test_drain_lets_in_flight_request_finish(
    router: HAProxyRouter, backends: Callable[..., Backend]
) -> None:
    router.ensure_route(Route(KEY))
    router.add_server(KEY, backends("old").server())
    url = router.public_url(KEY)
    slow = InFlight(url)
    wait_until(lambda: sessions(router, KEY, "old") == 1, timeout=5)

    router.add_server(KEY, backends("new").server())
    router.drain(KEY, "old")

    assert names(url, 20) == Counter(new=20)
    assert slow.wait() == (200, "old")
    assert {s.name: s.state for s in router.servers(KEY)} == {"old": "drain", "new": "ready"}


def test_remove_server_waits_for_no_sessions(
    router: HAProxyRouter, backends: Callable[..., Backend]
) -> None:
    router.ensure_route(Route(KEY))
    router.add_server(KEY, backends("old").server())
    router.add_server(KEY, backends("new").server(weight=0))
    url = router.public_url(KEY)
    slow = InFlight(url)
    wait_until(lambda: sessions(router, KEY, "old") == 1, timeout=5)

    with pytest.raises(RouterError, match="still has connections"):
        router.remove_server(KEY, "old", timeout=0)  # left in maint, request still served
    assert slow.wait() == (200, "old")
    assert {s.name: s.state for s in router.servers(KEY)}["old"] == "maint"

    router.set_weight(KEY, "new", 100)
    router.remove_server(KEY, "old")
    router.remove_server(KEY, "old")  # already gone: no error

    assert [s.name for s in router.servers(KEY)] == ["new"]
    assert names(url, 10) == Counter(new=10)
    assert [s.name for s in load_state(router.directory).routes[KEY].servers] == ["new"]


def test_stats_count_requests_and_5xx(
    router: HAProxyRouter, backends: Callable[..., Backend]
) -> None:
    router.ensure_route(Route(KEY))
    router.add_server(KEY, backends("good").server())
    router.add_server(KEY, backends("bad", status=500).server())

    answers = Counter(get(router.public_url(KEY))[0] for _ in range(20))

    stats = {s.name: s for s in router.stats(KEY)}
    assert answers[500] == stats["bad"].hrsp_5xx > 0
    assert answers[200] == stats["good"].hrsp_2xx > 0
    assert stats["good"].hrsp_5xx == 0
    assert stats["good"].req_tot + stats["bad"].req_tot == 20
    assert stats["bad"].stot == stats["bad"].req_tot
    assert stats["good"].weight == 100
    assert stats["good"].scur == 0


def test_new_route_reload_keeps_in_flight_request_and_servers(
    router: HAProxyRouter, backends: Callable[..., Backend]
) -> None:
    router.ensure_route(Route(KEY))
    router.add_server(KEY, backends("a").server(weight=30))
    router.add_server(KEY, backends("b").server(weight=70))
    router.add_server(KEY, backends("c").server())
    router.drain(KEY, "c")
    before = router.servers(KEY)
    slow = InFlight(router.public_url(KEY))
    wait_until(lambda: sum(s.scur for s in router.stats(KEY)) == 1, timeout=5)
    reloads = router.process.master.status().reloads
    traffic = Traffic(router.public_url(KEY))

    holder = hold_first_free_port(router.port_range)  # a port given by hand: no spare has it
    port = holder.getsockname()[1]
    holder.close()
    other = router.ensure_route(Route("dep_y--staging", port))  # new frontend: reload

    assert traffic.stop() == []  # nothing refused or reset while reloading
    assert router.process.master.status().reloads == reloads + 1
    assert other.listen_port != router.ensure_route(Route(KEY)).listen_port
    assert slow.wait() in {(200, "a"), (200, "b")}
    assert router.servers(KEY) == before  # drain and weights survived the reload
    assert set(names(router.public_url(KEY), 20)) == {"a", "b"}
    router.add_server(other.key, backends("y").server())
    assert get(router.public_url(other.key)) == (200, "y")


def test_failed_reload_keeps_the_previous_config_serving(
    router: HAProxyRouter, backends: Callable[..., Backend]
) -> None:
    route = router.ensure_route(Route(KEY))
    a = backends("a")
    router.add_server(KEY, a.server())
    taken = hold_first_free_port(router.port_range)
    config = router.process.config_path.read_text()
    route_files = route_config_files(router)
    try:
        with pytest.raises(RouterError, match="keeps serving the previous one"):
            router.ensure_route(Route("dep_y--staging", taken.getsockname()[1]))
    finally:
        taken.close()

    assert router.process.config_path.read_text() == config
    assert route_config_files(router) == route_files  # conf.d put back as it was
    assert router.desired() == {route: [a.server()]}
    assert get(router.public_url(KEY)) == (200, "a")
    router.add_server(KEY, backends("b").server())  # runtime API still works
    assert set(names(router.public_url(KEY), 10)) == {"a", "b"}
    assert router.ensure_route(Route("dep_y--staging")).listen_port  # a free port works


def route_config_files(router: HAProxyRouter) -> dict[str, str]:
    """The per-route config files HAProxy reads, by name."""
    return {p.name: p.read_text() for p in sorted(router.process.routes_path.glob("*.cfg"))}


def test_a_server_change_rewrites_only_its_own_route_files(
    router: HAProxyRouter, backends: Callable[..., Backend]
) -> None:
    other = "dep_y--staging"
    router.sync({Route(KEY): [backends("a").server()], Route(other): [backends("b").server()]})
    others = [
        router.directory / "routes" / f"{other}.json",
        router.process.routes_path / f"{other}.cfg",
    ]
    stamps = [os.stat(path).st_mtime_ns for path in others]
    ours = router.process.routes_path / f"{KEY}.cfg"
    before = ours.read_text()

    router.add_server(KEY, backends("c").server())
    router.drain(KEY, "a")

    assert [os.stat(path).st_mtime_ns for path in others] == stamps
    assert "server c " in ours.read_text() and ours.read_text() != before
    assert "server a " in ours.read_text() and "weight 0" in ours.read_text()  # drain
    router.reload()  # a reload reads conf.d: nothing lost
    assert {s.name: s.state for s in router.servers(KEY)} == {"a": "drain", "c": "ready"}
    assert get(router.public_url(other)) == (200, "b")


def test_a_state_file_of_the_previous_format_is_split_into_route_files(
    router_dir: Path,
) -> None:
    router_dir.mkdir(parents=True, exist_ok=True)
    server = {"name": "a", "address": "127.0.0.1", "port": 8080, "weight": 100, "state": "ready"}
    (router_dir / "state.json").write_text(
        json.dumps(
            {
                "version": 2,
                "routes": {KEY: {"listen_port": 20123, "servers": [server]}},
                "hosts": {"routes": {"a.example.test": KEY}},
            }
        )
    )
    state = load_state(router_dir)
    assert state.routes[KEY].listen_port == 20123
    assert state.routes[KEY].servers == [Server(**server)]  # type: ignore[arg-type]
    assert state.hosts.routes == {"a.example.test": KEY}
    assert json.loads((router_dir / "routes" / f"{KEY}.json").read_text())["listen_port"] == 20123
    assert "routes" not in json.loads((router_dir / "state.json").read_text())


def test_a_master_started_without_route_files_is_restarted_once(
    router: HAProxyRouter, backends: Callable[..., Backend]
) -> None:
    """An HAProxy started by a shipway from before conf.d (every route in haproxy.cfg) would
    lose every route on a reload: the first reload restarts it with conf.d instead."""
    router.sync({Route(KEY): [backends("a").server()]})
    route_file = router.process.routes_path / f"{KEY}.cfg"
    legacy = router.process.config_path.read_text() + route_file.read_text()
    router.stop()
    router.process.config_path.write_text(legacy)
    shutil.rmtree(router.process.routes_path)
    old_way = [
        *("haproxy", "-W", "-S", f"{router.process.master.path},mode,600"),
        *("-p", str(router.process.pid_path), "-f", str(router.process.config_path), "-D"),
    ]
    subprocess.run(old_way, check=True, timeout=30)
    wait_until(router.is_running, timeout=10, message="legacy HAProxy started")
    assert get(router.public_url(KEY)) == (200, "a")
    assert not router.process.reads_route_files()

    router.ensure_route(Route("dep_y--staging"))  # a reload: restarted once, with conf.d

    assert router.process.reads_route_files()
    assert get(router.public_url(KEY)) == (200, "a")
    router.add_server("dep_y--staging", backends("b").server())
    assert get(router.public_url("dep_y--staging")) == (200, "b")


def test_remove_route_closes_its_port(
    router: HAProxyRouter, backends: Callable[..., Backend]
) -> None:
    router.ensure_route(Route(KEY))
    router.add_server(KEY, backends("a").server())
    url = router.public_url(KEY)

    router.remove_route(KEY)
    router.remove_route(KEY)  # absent: no error

    wait_until(lambda: refused(url), timeout=5)
    with pytest.raises(RouterError, match="no route"):
        router.public_url(KEY)


def test_kill_9_then_start_and_sync_restore_everything(
    make_router: Callable[[], HAProxyRouter], backends: Callable[..., Backend]
) -> None:
    router = make_router()
    router.start()
    first = router.ensure_route(Route(KEY))
    second = router.ensure_route(Route("dep_y--staging"))
    router.add_server(KEY, backends("a").server(weight=20))
    router.add_server(KEY, backends("b").server())
    router.drain(KEY, "b")
    router.add_server(second.key, backends("y").server())
    pid = router.process.pid()
    assert pid is not None

    os.killpg(pid, signal.SIGKILL)  # master and workers
    wait_until(lambda: not router.is_running(), timeout=5)
    wait_until(lambda: refused(router.public_url(KEY)), timeout=5)

    restarted = make_router()  # shipway restarted too: only the state folder is left
    restarted.start()
    routes = restarted.sync(restarted.desired())

    assert routes == {KEY: first, second.key: second}  # same ports
    assert names(restarted.public_url(KEY), 10) == Counter(a=10)
    assert get(restarted.public_url(second.key)) == (200, "y")
    assert {(s.name, s.weight, s.state) for s in restarted.servers(KEY)} == {
        ("a", 20, "ready"),
        ("b", 100, "drain"),
    }


def test_ports_persist_across_restart(
    make_router: Callable[[], HAProxyRouter], backends: Callable[..., Backend]
) -> None:
    router = make_router()
    router.start()
    taken = hold_first_free_port(router.port_range)  # someone else takes it
    held = taken.getsockname()[1]
    try:
        first = router.ensure_route(Route(KEY))
        second = router.ensure_route(Route("dep_y--staging"))
    finally:
        taken.close()
    assert held not in (first.listen_port, second.listen_port)
    assert len({first.listen_port, second.listen_port}) == 2
    router.add_server(KEY, backends("a").server())

    router.restart()
    assert router.ensure_route(Route(KEY)) == first
    assert get(router.public_url(KEY)) == (200, "a")

    router.stop()
    again = make_router()
    again.start()
    assert again.public_url(second.key) == f"http://127.0.0.1:{second.listen_port}"
    assert again.sync({Route(KEY): [backends("z").server()]}) == {KEY: first}
    assert get(again.public_url(KEY)) == (200, "z")


def test_sync_converges_servers_without_reload(
    router: HAProxyRouter, backends: Callable[..., Backend]
) -> None:
    router.ensure_route(Route(KEY))
    a, b, c = backends("a"), backends("b"), backends("c")
    router.add_server(KEY, a.server())
    router.add_server(KEY, b.server())
    get(router.public_url(KEY))
    reloads = router.process.master.status().reloads

    router.sync({Route(KEY): [a.server(weight=0), c.server(state="drain")]})

    assert router.process.master.status().reloads == reloads
    assert {(s.name, s.weight, s.state) for s in router.servers(KEY)} == {
        ("a", 0, "ready"),
        ("c", 100, "drain"),
    }
    assert sum(s.req_tot for s in router.stats(KEY)) == 1  # counters kept: no reload
    port = router.ensure_route(Route(KEY)).listen_port
    assert router.desired() == {Route(KEY, port): [a.server(weight=0), c.server(state="drain")]}


def test_sync_when_stopped_is_applied_on_start(
    make_router: Callable[[], HAProxyRouter], backends: Callable[..., Backend]
) -> None:
    router = make_router()
    routes = router.sync({Route(KEY): [backends("a").server()]})
    assert not router.is_running()

    router.start()

    assert get(router.public_url(KEY)) == (200, "a")
    assert router.ensure_route(Route(KEY)) == routes[KEY]


def test_refusals_are_clear(
    make_router: Callable[[], HAProxyRouter], backends: Callable[..., Backend]
) -> None:
    router = make_router()
    with pytest.raises(RouterError, match="not running"):
        router.ensure_route(Route(KEY))
    with pytest.raises(RouterError, match="cannot run /nonexistent/haproxy"):
        HAProxyRouter(router.directory, binary="/nonexistent/haproxy").start()
    router.start()
    router.ensure_route(Route(KEY))
    router.add_server(KEY, backends("a").server())

    with pytest.raises(RouterError, match="no server 'nope'"):
        router.set_weight(KEY, "nope", 5)
    with pytest.raises(RouterError, match="bad weight"):
        router.set_weight(KEY, "a", 300)
    with pytest.raises(RouterError, match="no route"):
        router.add_server("dep_unknown--x", backends("b").server())
    with pytest.raises(RouterError, match="No such proxy"):
        router.stats("dep_unknown--x")
    with pytest.raises(RouterError, match="address must be an IP"):
        Server("s", "localhost", 80)
    with pytest.raises(RouterError, match="bad route key"):
        Route("a b;del server x")
    with pytest.raises(RouterError, match="Unknown command"):
        router.api.change("frobnicate")


def test_only_a_daemon_outlives_its_python_process(router_dir: Path) -> None:
    def start_in_child(daemon: bool) -> None:
        code = f"""
            from pathlib import Path
            from shipway.router import HAProxyRouter
            HAProxyRouter(Path({str(router_dir)!r}), daemon={daemon}).start()
        """
        subprocess.run([sys.executable, "-c", textwrap.dedent(code)], check=True, timeout=30)

    router = HAProxyRouter(router_dir, daemon=False)
    try:
        start_in_child(daemon=False)
        wait_until(lambda: not router.is_running(), timeout=5, message="attached HAProxy lives")

        start_in_child(daemon=True)
        time.sleep(0.5)
        assert router.is_running()
    finally:
        router.stop()
    assert not router.is_running()


def hold_first_free_port(port_range: tuple[int, int]) -> socket.socket:
    """A listening socket on the first free port of the range."""
    for port in range(port_range[0], port_range[1] + 1):
        holder = socket.socket()
        try:
            holder.bind(("127.0.0.1", port))
        except OSError:
            holder.close()
            continue
        holder.listen()
        return holder
    raise AssertionError(f"no free port in {port_range}")
