"""The real stack for end-to-end tests: PostgreSQL, Redis, and shipway processes.

Every test gets its own PostgreSQL database and its own Redis server (so stopping
Redis, or messages left in it, never touch another test) and a ``Stack`` that
starts ``shipway worker``/``relay``/``api`` processes with short lease and relay
settings. Every process started is stopped when the test ends.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from shipway.config import get_settings
from tests.support.processes import Service, Supervisor, child_env, executable, wait_until
from tests.support.services import Postgres, Redis, free_port, start_redis

# Short timings so lost workers are noticed within seconds; the tests only poll
# with deadlines, so slower machines make them slower, not flaky.
FAST_SETTINGS = {
    "SHIPWAY_LEASE_SECONDS": "3",
    "SHIPWAY_HEARTBEAT_SECONDS": "0.5",
    "SHIPWAY_RELAY_INTERVAL_SECONDS": "0.3",
    "SHIPWAY_REDISPATCH_AFTER_SECONDS": "2",
    "SHIPWAY_DISPATCH_TIMEOUT_SECONDS": "1",
    "SHIPWAY_LOG_LEVEL": "INFO",
    # Rollouts: retire replaced replicas at once, and stop them quickly.
    "SHIPWAY_SCALE_DOWN_DELAY_SECONDS": "0",
    "SHIPWAY_STOP_TIMEOUT_SECONDS": "0",
    "SHIPWAY_DRAIN_TIMEOUT_SECONDS": "5",
}


def _router_dir() -> Path:
    """A short folder for HAProxy's state (unix socket paths are limited to ~100 bytes)."""
    return Path(tempfile.mkdtemp(prefix="swe-"))


def _haproxy_log(router_dir: Path, limit: int = 20_000) -> str:
    """The end of HAProxy's log of a failed test (its folder is removed at teardown)."""
    try:
        text = (router_dir / "haproxy.log").read_text(errors="replace")
    except FileNotFoundError:
        return f"(no HAProxy log in {router_dir})"
    return f"--- {router_dir}/haproxy.log (last {limit} characters)\n{text[-limit:]}"


@dataclass
class Api:
    """A running ``shipway api`` (or ``shipway up``) process and its base URL."""

    service: Service
    base_url: str

    def client(self, token: str | None = None) -> httpx.Client:
        """An HTTP client for this API (bearer token if given)."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=30.0)


def wait_for_api(service: Service, base_url: str, *, timeout: float = 30.0) -> None:
    """Block until ``GET /healthz`` answers 200."""

    def healthy() -> bool:
        if not service.alive():
            raise AssertionError(f"{service.name} exited:\n{service.log_tail()}")
        try:
            return httpx.get(f"{base_url}/healthz", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(healthy, timeout=timeout, message=lambda: f"{service.name}:\n{service.log_tail()}")


@dataclass
class Stack:
    """Settings shared by the test process and every shipway process it starts."""

    settings: dict[str, str]
    supervisor: Supervisor
    redis: Redis | None = None
    workers: list[Service] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        """Environment of a child process."""
        return child_env(self.settings)

    def start_worker(
        self,
        name: str,
        *,
        queues: str = "builds,rollouts",
        concurrency: int = 1,
        wait: bool = True,
    ) -> Service:
        """``shipway worker`` in its own process group; returns once it consumes (``wait``)."""
        worker = self.supervisor.spawn(
            name,
            [
                executable("shipway"),
                "worker",
                "--queues",
                queues,
                "--concurrency",
                str(concurrency),
                "--hostname",
                f"{name}@e2e",
            ],
            env=self.env,
        )
        self.workers.append(worker)
        if wait:
            self.wait_ready(worker)
        return worker

    def start_relay(self, *, wait: bool = True) -> Service:
        """``shipway relay`` (outbox relay and lease reaper)."""
        relay = self.supervisor.spawn("relay", [executable("shipway"), "relay"], env=self.env)
        if wait:
            self.wait_ready(relay)
        return relay

    def wait_ready(self, *services: Service) -> None:
        """Block until each worker consumes from its queues and each relay loops."""
        for service in services:
            marker = f"{service.name}@e2e ready." if service in self.workers else "relay started"
            service.wait_for_log(marker)

    def start_api(self) -> Api:
        """``shipway api`` on a free port."""
        port = free_port()
        service = self.supervisor.spawn(
            "api",
            [executable("shipway"), "api", "--host", "127.0.0.1", "--port", str(port)],
            env=self.env,
        )
        base_url = f"http://127.0.0.1:{port}"
        wait_for_api(service, base_url)
        return Api(service=service, base_url=base_url)


def _use_settings(monkeypatch: pytest.MonkeyPatch, settings: dict[str, str]) -> None:
    """Point the test process at the same database and broker as its children."""
    for key, value in settings.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()


@pytest.fixture
def stack(
    postgres_server: Postgres,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> Iterator[Stack]:
    """A fresh PostgreSQL database, a Redis server of its own, and a process supervisor."""

    def failed() -> bool:
        report = getattr(request.node, "rep_call", None)
        return report is not None and bool(report.failed)

    with running_stack(postgres_server, tmp_path, monkeypatch, failed=failed) as running:
        yield running


@contextlib.contextmanager
def running_stack(
    postgres_server: Postgres,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    failed: Callable[[], bool],
) -> Iterator[Stack]:
    """The ``stack`` fixture's body: also for a stack shared by a module's tests."""
    from shipway.db import engine_for
    from tests.conftest import clean_up_rollouts, drop_postgres_database, new_postgres_database

    database_url = new_postgres_database(postgres_server)
    redis = start_redis(tmp_path / "redis")
    router_dir = _router_dir()
    settings = {
        **FAST_SETTINGS,
        "SHIPWAY_DATABASE_URL": database_url,
        "SHIPWAY_BROKER_URL": redis.url,
        "SHIPWAY_DATA_DIR": str(tmp_path / "data"),
        "SHIPWAY_ROUTER_DIR": str(router_dir),
    }
    _use_settings(monkeypatch, settings)
    supervisor = Supervisor(log_dir=tmp_path / "logs")
    stack = Stack(settings=settings, supervisor=supervisor, redis=redis)
    try:
        yield stack
    finally:
        for worker in stack.workers:  # disposable: a warm shutdown only costs time here
            worker.kill()
        supervisor.stop_all()
        redis.stop()
        if failed():
            print(supervisor.logs())
            print(_haproxy_log(router_dir))
        clean_up_rollouts(database_url, router_dir)  # HAProxy and replica containers
        engine_for(database_url).dispose()
        drop_postgres_database(postgres_server, database_url)
        get_settings.cache_clear()


@pytest.fixture
def embedded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Iterator[Stack]:
    """Settings of the embedded mode: SQLite and the filesystem transport in a data dir."""
    from shipway.db import engine_for
    from tests.conftest import clean_up_rollouts

    data_dir = tmp_path / "data"
    router_dir = _router_dir()
    settings = {
        **FAST_SETTINGS,
        "SHIPWAY_DATA_DIR": str(data_dir),
        "SHIPWAY_DATABASE_URL": "",
        "SHIPWAY_BROKER_URL": "",
        "SHIPWAY_ROUTER_DIR": str(router_dir),
    }
    _use_settings(monkeypatch, settings)
    supervisor = Supervisor(log_dir=tmp_path / "logs")
    try:
        yield Stack(settings=settings, supervisor=supervisor)
    finally:
        supervisor.stop_all()
        database_url = get_settings().resolved_database_url
        if (data_dir / "shipway.db").exists():
            clean_up_rollouts(database_url, router_dir)
        engine_for(database_url).dispose()
        get_settings.cache_clear()
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(supervisor.logs())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Remember each phase's report on the test item (to print process logs on failure)."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
