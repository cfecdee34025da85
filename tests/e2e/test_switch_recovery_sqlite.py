"""Router and database agree after a kill between the router switch and its commit, on
SQLite: ``shipway up``'s default (tests/e2e/test_switch_recovery.py does it on PostgreSQL).

SQLite has no row lock to hold the worker with: the test holds the database's write lock
(``BEGIN IMMEDIATE`` on the same file), so the worker's next transaction, the one recording
the switch, waits for it (``busy_timeout``). Taken too early, the lock would hold the worker
*before* the router change, at the write that enters the switch phase; so HAProxy is frozen
(SIGSTOP) during the health check: the worker records the switch phase, then waits on the
router's admin socket; the test takes the write lock and lets HAProxy go (SIGCONT). The
worker moves traffic to v2 and blocks committing it: users get v2 while the database says v1
is ACTIVE and v2 DEPLOYING (issue 19, "kill during the switch phase"). ``shipway up`` and its
workers are SIGKILLed there, the lock released, and a new ``shipway up`` started: its
start-up recovery requeues the job at once, and the resumed attempt completes and records
the switch the router made.

Checked: the database and the router agree (one ACTIVE release, HAProxy's ready servers its
replicas, every answer its version), never two ACTIVE releases, no request of the public
URL failed meanwhile (those sent while HAProxy was frozen waited). The time from the restart
to agreement is printed (docs/chaos.md). The same, repeated, is tests/chaos/test_switch_restart.py.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.chaos.test_haproxy_kill import haproxy_pid
from tests.e2e.conftest import Stack
from tests.e2e.embedded_support import start_up, token_client, worker_pids_of
from tests.e2e.rollout_support import SiteImage, create_deployment, router_servers, site_images
from tests.e2e.test_switch_recovery import (
    DEFAULT_LEASE,
    Interrupted,
    agreed,
    finish,
    promote_over_v1,
)
from tests.support.processes import Service, wait_until

pytestmark = pytest.mark.e2e
__all__ = ["site_images"]  # the fixture, imported for pytest


class Traffic(threading.Thread):
    """Requests to the public URL, one after another, each on a new connection; counts the
    answers that are not 200 (a request sent while HAProxy is frozen waits, up to 60 s)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True, name="traffic")
        self.url, self.sent = url, 0
        self.failed: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.02):
            try:
                answer = httpx.get(self.url, timeout=60)
                if answer.status_code != 200:
                    self.failed.append(f"{answer.status_code} {answer.text[:80]}")
            except httpx.HTTPError as error:
                self.failed.append(repr(error))
            self.sent += 1


@contextlib.contextmanager
def write_lock(database: Path) -> Iterator[sqlite3.Connection]:
    """Hold SQLite's write lock on ``database`` (readers go on: WAL)."""
    connection = sqlite3.connect(database, timeout=60, isolation_level=None)
    try:
        connection.execute("BEGIN IMMEDIATE")
        yield connection
    finally:
        connection.rollback()
        connection.close()


def read(database: Path, query: str, *args: str) -> list[tuple[str, ...]]:
    """A read that never takes the write lock (shipway's engine begins every transaction
    with BEGIN IMMEDIATE: its reads would queue behind the test's lock)."""
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=60)
    try:
        return connection.execute(query, args).fetchall()
    finally:
        connection.close()


def job_phase(database: Path, job_id: str) -> str:
    return read(database, "SELECT phase FROM jobs WHERE id = ?", job_id)[0][0] or ""


def statuses(database: Path, cut: Interrupted) -> tuple[str, str]:
    """The statuses of v1's and v2's releases."""
    query = "SELECT id, status FROM releases WHERE id IN (?, ?)"
    rows = {row[0]: row[1] for row in read(database, query, cut.v1_release, cut.v2_release)}
    return rows[cut.v1_release], rows[cut.v2_release]


def switched_to(cut: Interrupted) -> bool:
    """HAProxy sends new requests to v2's replicas only."""
    ready = {s.name for s in router_servers(cut.app["id"]) if s.state == "ready"}
    return bool(ready) and all(name.startswith(f"sw-{cut.v2_release}-") for name in ready)


@dataclass
class Cycle:
    """One kill in the switch and the way back: seconds from the restart (and from the new
    ``shipway up``'s API answering) to agreement; the requests sent meanwhile."""

    total: float
    since_api: float
    sent: int
    failed: list[str]


def kill_in_the_switch(
    stack: Stack, images: dict[str, SiteImage], up: Service, name: str
) -> tuple[Service, Cycle]:
    """v2's promote on ``up`` (SQLite) killed with ``up`` and its workers after the router
    switch and before its commit; a new ``shipway up`` (``name``) returns, the database and
    the router agree on v2 and the job ends. Returns the new ``up`` and the figures."""
    database = Path(stack.settings["SHIPWAY_DATA_DIR"]) / "shipway.db"
    base_url = up_url(up)
    token = {"Authorization": token_client(stack, base_url).headers["Authorization"]}
    client = httpx.Client(base_url=base_url, timeout=30)
    app = create_deployment(client, token)
    cut = promote_over_v1(client, app, images)
    traffic = Traffic(cut.url)
    traffic.start()
    workers = worker_pids_of(up)

    wait_until(lambda: job_phase(database, cut.job_id) == "health_check", timeout=60, interval=0.02)
    router = haproxy_pid(Path(stack.settings["SHIPWAY_ROUTER_DIR"]))
    assert router is not None
    os.killpg(router, signal.SIGSTOP)  # master and workers: the admin socket answers no more
    try:
        wait_until(lambda: job_phase(database, cut.job_id) == "switch", timeout=60, interval=0.02)
        with write_lock(database):
            os.killpg(router, signal.SIGCONT)
            # the worker changes the router, then waits for the lock to record it
            wait_until(lambda: switched_to(cut), timeout=60, interval=0.05)
            assert statuses(database, cut) == ("ACTIVE", "DEPLOYING")  # the finding
            os.kill(up.pid, signal.SIGKILL)
            for pid in workers:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
            up.process.wait(timeout=10)
    finally:
        os.killpg(router, signal.SIGCONT)
    assert statuses(database, cut) == ("ACTIVE", "DEPLOYING")
    assert switched_to(cut)  # users still get v2: shipway is down

    started = time.monotonic()
    again, _ = start_up(stack, name)
    answering = time.monotonic()
    assert wait_until(lambda: agreed(cut), timeout=60, interval=0.1) == "site-v2"
    agreed_at = time.monotonic()
    finish(cut, phases_after_kill=["switch", "drain", "retire"])
    traffic.stop.set()
    traffic.join(90)
    return again, Cycle(agreed_at - started, agreed_at - answering, traffic.sent, traffic.failed)


def up_url(up: Service) -> str:
    """The API address ``shipway up`` was started with."""
    return f"http://127.0.0.1:{up.args[up.args.index('--port') + 1]}"


@pytest.fixture
def sqlite_up(embedded: Stack, monkeypatch: pytest.MonkeyPatch) -> Stack:
    """The embedded stack (SQLite) with ``shipway up``'s lease and heartbeat."""
    embedded.settings.update(DEFAULT_LEASE)
    for key, value in DEFAULT_LEASE.items():
        monkeypatch.setenv(key, value)
    return embedded


def test_shipway_up_killed_in_the_switch_agrees_on_sqlite(
    sqlite_up: Stack, site_images: dict[str, SiteImage]
) -> None:
    first, _ = start_up(sqlite_up, "up-1")
    _, cycle = kill_in_the_switch(sqlite_up, site_images, first, "up-2")
    print(
        f"\nswitch recovery (shipway up, SQLite): agreement {cycle.total:.1f}s after the "
        f"restart, {cycle.since_api:.1f}s after its API answered; {cycle.sent} requests; "
        f"load {os.getloadavg()[0]:.1f}"
    )
    assert cycle.sent > 0 and cycle.failed == [], cycle.failed
