"""Crash safety: a worker SIGKILLed in each rollout phase, and what the next worker makes of it.

Real ``shipway worker`` and ``shipway relay`` processes (PostgreSQL, Redis,
3-second leases) run the rollout of v2 over an ACTIVE v1 with two replicas. The
test kills the worker's whole process group in a chosen phase; the reaper
requeues the job and a new worker resumes it. Afterwards the job succeeded, the
engine's containers, the database and HAProxy agree exactly (no orphan, no
duplicate replica, router servers = running containers), and there never were
two ACTIVE releases.

To stop a worker *inside* a phase rather than near it, the test holds a
PostgreSQL row lock on the release the worker is about to update (the worker
blocks on it, visibly in ``pg_stat_activity``) or makes the phase slow (a
replica that boots slowly, a request in flight during the drain).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, text, update

from shipway.catalog.models import Release
from shipway.db import engine_for, session_factory, transaction
from shipway.jobs.models import Job
from tests.e2e.conftest import Stack
from tests.e2e.helpers import api_token, owner_pid, wait_for_job
from tests.e2e.rollout_support import (
    HTTPD,
    SiteImage,
    assert_consistent,
    containers,
    create_deployment,
    fetch,
    job,
    promote,
    public_url,
    release,
    rollback,
    rollout_stack,
    router_servers,
    site_images,
    site_version,
)
from tests.support.processes import Service, wait_until
from tests.support.variants import long_variant

pytestmark = pytest.mark.e2e
__all__ = ["rollout_stack", "site_images"]  # fixtures, imported for pytest

SLOW_BOOT = "sh -c 'sleep {seconds}; exec httpd -f -p 8080 -h /srv/www'"


@pytest.fixture
def api(rollout_stack: Stack) -> Iterator[TestClient]:
    """The API in this process, on the stack's database and broker."""
    from shipway.api import create_app

    with TestClient(create_app(), raise_server_exceptions=False) as client:
        yield client


class RowLock:
    """A ``SELECT … FOR UPDATE`` on one release, held from the test until released."""

    def __init__(self) -> None:
        self.connection: Any = None

    def hold(self, release_id: str) -> None:
        engine = engine_for(_database_url())
        self.connection = engine.connect()
        self.connection.begin()
        self.connection.execute(
            text("SELECT id FROM releases WHERE id = :id FOR UPDATE"), {"id": release_id}
        )

    def release(self) -> None:
        if self.connection is not None:
            self.connection.rollback()
            self.connection.close()
            self.connection = None


def _database_url() -> str:
    from shipway.config import get_settings

    return get_settings().resolved_database_url


def lock_waiters() -> int:
    """Backends of this database waiting for a row lock (a blocked worker)."""
    with engine_for(_database_url()).connect() as conn:
        return int(
            conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            ).scalar_one()
        )


class ActiveSampler(threading.Thread):
    """Counts ACTIVE releases per environment every 50 ms; remembers the maximum."""

    def __init__(self, deployment_id: str) -> None:
        super().__init__(daemon=True, name="active-sampler")
        self.deployment_id = deployment_id
        self.most = 0
        self.samples = 0
        self.stop = threading.Event()

    def run(self) -> None:
        maker = session_factory()
        while not self.stop.wait(0.05):
            with maker() as session:
                statuses = session.scalars(
                    select(Release.status).where(
                        Release.deployment_id == self.deployment_id,
                        Release.environment == "production",
                    )
                ).all()
            self.most = max(self.most, sum(s == "ACTIVE" for s in statuses))
            self.samples += 1


class SlowRequest(threading.Thread):
    """One long request through the public URL (in flight while a release drains)."""

    def __init__(self, url: str, seconds: int) -> None:
        super().__init__(daemon=True, name="slow-request")
        self.url, self.seconds = url, seconds
        self.outcome: str | None = None

    def run(self) -> None:
        try:
            response = httpx.get(f"{self.url}/cgi-bin/slow?{self.seconds}", timeout=120)
            self.outcome = f"{response.status_code} {response.text.strip()}"
        except httpx.HTTPError as error:
            self.outcome = f"{type(error).__name__}: {error}"


def kill_when(
    stack: Stack, worker: Service, job_id: str, ready: Callable[[Job], bool], what: str
) -> Job:
    """Wait until ``ready(job)`` holds for the running job, then SIGKILL its worker group."""

    def check() -> Job | None:
        row = job(job_id)
        assert row.state in ("queued", "running"), (row.state, row.failure_diagnostics)
        return row if row.state == "running" and ready(row) else None

    row = wait_until(check, timeout=90, interval=0.05, message=f"{job_id} never reached {what}")
    assert row.lease_owner is not None
    assert stack.supervisor.owner_of(owner_pid(row.lease_owner)) is worker
    worker.kill()
    return row


# make test: a kill before, during and after the router switch; the rest in make test-chaos.
PHASES = [
    "scale",
    long_variant("health_check"),
    "switch",
    "drain",
    long_variant("retire"),
    long_variant("retire_job"),
]


@pytest.mark.parametrize("phase", PHASES)
def test_worker_killed_in_phase_resumes_to_a_consistent_state(
    rollout_stack: Stack,
    api: TestClient,
    site_images: dict[str, SiteImage],
    monkeypatch: pytest.MonkeyPatch,
    phase: str,
) -> None:
    stack = rollout_stack
    settings = {"SHIPWAY_DRAIN_TIMEOUT_SECONDS": "30"}
    if phase == "retire_job":
        settings["SHIPWAY_SCALE_DOWN_DELAY_SECONDS"] = "2"
    stack.settings.update(settings)
    for key, value in settings.items():
        monkeypatch.setenv(key, value)
    from shipway.config import get_settings

    get_settings.cache_clear()
    stack.start_relay()
    first = stack.start_worker("first")
    token = {"Authorization": f"Bearer {api_token()}"}
    app = create_deployment(api, token, replicas=2, health={"deadline_seconds": 60})
    sampler = ActiveSampler(app["id"])
    sampler.start()
    v1 = site_version(app["id"], site_images["v1"])
    boot = {"health_check": 8, "switch": 3}.get(phase)
    command = SLOW_BOOT.format(seconds=boot) if boot else None
    v2 = site_version(app["id"], site_images["v2"], **({"command": command} if command else {}))
    one = promote(api, app, v1)
    assert wait_for_job(one["job"]["id"], timeout=60).state == "succeeded"
    v1_release = one["release"]["id"]
    url = public_url(api, app)
    assert fetch(url) == "site-v1"
    first.stop()

    lock = RowLock()
    slow: SlowRequest | None = None
    if phase in ("drain", "retire"):
        # Long enough to outlast v2's scale and health check on a busy machine: the drain
        # must still be waiting for it when the test looks (4 s was not, at load 6).
        slow = SlowRequest(url, 12)
        slow.start()
        wait_until(lambda: _busy(app["id"]), timeout=10, message="slow request not in flight")
    two = promote(api, app, v2)
    job_id, v2_release = two["job"]["id"], two["release"]["id"]
    if phase == "scale":
        lock.hold(v2_release)  # scale_up runs, then recording the replicas blocks
    doomed = stack.start_worker("doomed")
    try:
        if phase == "scale":
            killed = kill_when(
                stack,
                doomed,
                job_id,
                lambda j: j.phase == "scale" and len(containers(v2_release)) == 2 and _waits(),
                "scale (blocked recording its replicas)",
            )
        elif phase == "health_check":
            killed = kill_when(
                stack, doomed, job_id, lambda j: j.phase == "health_check", "health_check"
            )
            assert fetch(url) == "site-v1"
        elif phase == "switch":
            wait_until(lambda: job(job_id).phase == "health_check", timeout=60, interval=0.05)
            lock.hold(v1_release)  # the switch moves traffic, then blocks retiring v1 in the DB
            killed = kill_when(
                stack,
                doomed,
                job_id,
                lambda j: _switched(j, app["id"], v2_release),
                "switch (router switched, database not yet)",
            )
        elif phase == "drain":
            killed = kill_when(stack, doomed, job_id, lambda j: j.phase == "drain", "drain")
            assert slow is not None and slow.is_alive()
        elif phase == "retire":
            wait_until(lambda: job(job_id).phase == "drain", timeout=60, interval=0.02)
            lock.hold(v1_release)  # retire removes servers and containers, then blocks
            killed = kill_when(
                stack,
                doomed,
                job_id,
                lambda j: j.phase == "retire" and _waits(),
                "retire (replicas removed, database not yet)",
            )
        else:  # retire_job: the delayed retire job of v1, after the promote succeeded
            assert wait_for_job(job_id, timeout=60).state == "succeeded"
            lock.hold(v1_release)
            retire_id = _retire_job(v1_release)
            job_id = retire_id
            killed = kill_when(
                stack,
                doomed,
                retire_id,
                lambda j: j.phase == "retire" and _waits(),
                "the retire job (blocked recording RETIRED)",
            )
    finally:
        lock.release()
    assert killed.state == "running"
    stack.start_worker("survivor")

    ended = wait_for_job(job_id, timeout=120)
    assert ended.state == "succeeded", (ended.failure_reason, ended.failure_diagnostics)
    assert ended.attempts == 2
    if slow is not None:
        slow.join(60)
        assert slow.outcome == "200 site-v1 slow"  # the in-flight request finished
    wait_until(
        lambda: release(v1_release).status == "RETIRED",
        timeout=60,
        message=lambda: f"v1 is {release(v1_release).status}",
    )
    assert release(v2_release).status == "ACTIVE"
    assert release(v2_release).replicas == 2
    assert {fetch(url) for _ in range(6)} == {"site-v2"}
    sampler.stop.set()
    sampler.join(5)
    assert sampler.samples > 0 and sampler.most == 1
    assert_consistent(app["id"])


@pytest.mark.parametrize("kind", ["promote", "warm_rollback"])
def test_worker_lost_after_the_router_switch_gives_traffic_back(
    rollout_stack: Stack,
    api: TestClient,
    site_images: dict[str, SiteImage],
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
) -> None:
    """Killed between the router switch and its commit, no attempt left: the server set
    the database describes (ACTIVE ready, the rest draining) is restored."""
    stack = rollout_stack
    if kind == "warm_rollback":
        stack.settings["SHIPWAY_SCALE_DOWN_DELAY_SECONDS"] = "300"
        monkeypatch.setenv("SHIPWAY_SCALE_DOWN_DELAY_SECONDS", "300")
        from shipway.config import get_settings

        get_settings.cache_clear()
    stack.start_relay()
    first = stack.start_worker("first")
    token = {"Authorization": f"Bearer {api_token()}"}
    app = create_deployment(api, token, replicas=2)
    slow = SLOW_BOOT.format(seconds=3)
    v1 = site_version(app["id"], site_images["v1"])
    v2 = site_version(app["id"], site_images["v2"], command=slow if kind == "promote" else HTTPD)
    one = promote(api, app, v1)
    assert wait_for_job(one["job"]["id"], timeout=60).state == "succeeded"
    url = public_url(api, app)
    if kind == "promote":
        serving, expected = one["release"]["id"], "site-v1"
    else:
        done = promote(api, app, v2)
        assert wait_for_job(done["job"]["id"], timeout=60).state == "succeeded"
        serving, expected = done["release"]["id"], "site-v2"
    # Stopped before the job under test exists: a worker still running when it is sent
    # would take it and die with it, spending its only attempt before the test starts.
    first.stop()
    if kind == "promote":
        two = promote(api, app, v2)
    else:
        response = rollback(api, app)
        assert response.status_code == 202, response.text
        two = response.json()
        assert two["release"]["id"] == one["release"]["id"]  # warm: v1's DRAINING release
    job_id, switching = two["job"]["id"], two["release"]["id"]
    with transaction() as session:  # this attempt is its last
        session.execute(update(Job).where(Job.id == job_id).values(max_attempts=1))
    lock = RowLock()
    if kind == "warm_rollback":
        lock.hold(serving)
    doomed = stack.start_worker("doomed")
    try:
        if kind == "promote":
            wait_until(lambda: job(job_id).phase == "health_check", timeout=60, interval=0.05)
            lock.hold(serving)
        kill_when(stack, doomed, job_id, lambda j: _switched(j, app["id"], switching), "switch")
        # (users got the unrecorded release here until the relay saw the worker's pid gone:
        # tests/e2e/test_switch_recovery.py)
    finally:
        lock.release()
    ended = wait_for_job(job_id, timeout=60)
    assert ended.state == "failed" and ended.failure_reason == "worker_lost"
    if kind == "promote":
        failed = release(switching)
        assert failed.status == "FAILED" and failed.failure_reason == "worker_lost"
        assert containers(switching) == []
    else:
        assert release(switching).status == "DRAINING"  # still warm, ready for another try
        assert len(containers(switching)) == 2
    assert release(serving).status == "ACTIVE"
    assert {fetch(url) for _ in range(6)} == {expected}
    assert_consistent(app["id"])


# --------------------------------------------------------------------------- helpers


def _waits() -> bool:
    return lock_waiters() > 0


def _switched(row: Job, deployment_id: str, release_id: str) -> bool:
    """In the switch phase, new servers ready in HAProxy, blocked on the database."""
    return row.phase == "switch" and _waits() and _ready_servers(deployment_id, release_id)


def _ready_servers(deployment_id: str, release_id: str) -> bool:
    prefix = f"sw-{release_id}-"
    return any(
        s.name.startswith(prefix) and s.state == "ready" for s in router_servers(deployment_id)
    )


def _busy(deployment_id: str) -> bool:
    from shipway.deployments.addresses import route_key
    from shipway.router.current import router_config

    stats = router_config().stats(route_key(deployment_id, "production"))
    return any(s.scur for s in stats)


def _retire_job(release_id: str) -> str:
    def find() -> str | None:
        with session_factory()() as session:
            return session.scalar(
                select(Job.id).where(Job.kind == "retire", Job.release_id == release_id)
            )

    return wait_until(find, timeout=30, message="no retire job was scheduled")
