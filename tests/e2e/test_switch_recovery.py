"""Router and database agree after a kill between the router switch and its commit.

Real ``shipway worker`` and ``shipway relay`` processes (PostgreSQL, Redis) with the
default lease (30 s) and heartbeat (5 s), so the lost worker's lease can never be what
ends the disagreement. A promote of v2 over an ACTIVE v1 moves traffic in HAProxy, then
blocks recording the switch (the test holds a row lock on v1's release); the relay and
the worker are SIGKILLed there: users get v2 while the API shows v1 ACTIVE and v2
DEPLOYING (issue 19, "kill during the switch phase"). Then shipway comes back:

- a relay restarted while the lost job still holds its lease gives the route back to
  v1 within seconds (the worker's pid is gone); the job, requeued (at once here, to
  keep ``make test`` short; after its real lease in tests/chaos/test_switch_restart.py),
  deploys v2 again and records it;
- the same with HAProxy killed too: the relay's router watch starts it again without
  the unrecorded switch;
- ``shipway up`` and its workers killed there, then a new ``shipway up``: its start-up
  recovery requeues the job at once and the resumed attempt completes the switch the
  router already made, without scaling or health checks (with a relay and a worker:
  tests/chaos/test_switch_restart.py).

Each time: exactly one ACTIVE release, HAProxy's ready servers are its replicas, every
answer of the public URL is its version, no orphan container. The recovery time (from
the restart to agreement) is printed and listed in docs/chaos.md.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from shipway.db import session_factory, transaction
from shipway.ids import utcnow
from shipway.jobs.models import Job
from shipway.jobs.reaper import reap_once
from tests.e2e.conftest import Stack
from tests.e2e.helpers import api_token, wait_for_job
from tests.e2e.rollout_support import (
    SiteImage,
    assert_consistent,
    create_deployment,
    deployment_containers,
    fetch,
    job,
    phases,
    promote,
    public_url,
    release,
    releases,
    rollout_stack,
    router_servers,
    site_images,
    site_version,
)
from tests.e2e.test_rollout_crashes import SLOW_BOOT, ActiveSampler, RowLock, _switched, kill_when
from tests.support.processes import Service, wait_until

pytestmark = pytest.mark.e2e
__all__ = ["rollout_stack", "site_images"]  # fixtures, imported for pytest

# The defaults of shipway up: a lost worker's lease ends 25-30 s after its last renewal.
DEFAULT_LEASE = {"SHIPWAY_LEASE_SECONDS": "30", "SHIPWAY_HEARTBEAT_SECONDS": "5"}
# From shipway being back (the processes a way back needs are up) to agreement, well under
# the 25 s the dead worker's lease still runs; process start-up (5-10 s under load) aside.
RECOVERY_BOUND_SECONDS = 8.0
RELAY_STARTED = "relay started"


@dataclass
class Interrupted:
    """A promote of v2 killed between its router switch and its commit."""

    app: dict[str, Any]
    url: str
    job_id: str
    v1_release: str
    v2_release: str
    markers: dict[str, str]  # version id -> what its ``/`` answers
    sampler: ActiveSampler


@pytest.fixture
def api(rollout_stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    """The API in this process; the stack runs with shipway up's lease and heartbeat."""
    from shipway.api import create_app
    from shipway.config import get_settings

    rollout_stack.settings.update(DEFAULT_LEASE)
    for key, value in DEFAULT_LEASE.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    with TestClient(create_app(), raise_server_exceptions=False) as client:
        yield client


def interrupt_switch(
    stack: Stack, api: TestClient, images: dict[str, SiteImage], *, tag: str = ""
) -> Interrupted:
    """v1 ACTIVE; v2's promote killed (with the relay) after HAProxy switched to v2.

    ``tag`` tells the workers of repeated runs apart (their logs are per name)."""
    relay = stack.start_relay()
    first = stack.start_worker(f"first{tag}")
    token = {"Authorization": f"Bearer {api_token()}"}
    app = create_deployment(api, token, replicas=2)
    cut = promote_over_v1(api, app, images, before_v2=first.stop)
    doomed = stack.start_worker(f"doomed{tag}")

    def kill() -> None:
        relay.kill()  # shipway goes down: no relay, no worker
        kill_when(stack, doomed, cut.job_id, lambda j: True, "switch (router switched)")

    kill_in_switch(cut, kill)
    return cut


def promote_over_v1(
    client: Any, app: dict[str, Any], images: dict[str, SiteImage], *, before_v2: Any = None
) -> Interrupted:
    """v1 promoted and serving, then a promote of v2 (3 s boot) queued; ``before_v2`` runs
    in between."""
    sampler = ActiveSampler(app["id"])
    sampler.start()
    v1 = site_version(app["id"], images["v1"])
    v2 = site_version(app["id"], images["v2"], command=SLOW_BOOT.format(seconds=3))
    one = promote(client, app, v1)
    assert wait_for_job(one["job"]["id"], timeout=60).state == "succeeded"
    url = public_url(client, app)
    assert fetch(url) == "site-v1"
    if before_v2 is not None:
        before_v2()
    two = promote(client, app, v2)
    markers = {v1: "site-v1", v2: "site-v2"}
    return Interrupted(
        app, url, two["job"]["id"], one["release"]["id"], two["release"]["id"], markers, sampler
    )


def kill_in_switch(cut: Interrupted, kill: Any) -> None:
    """Call ``kill`` once HAProxy sends traffic to v2 and the job blocks recording it (a row
    lock on v1's release); then users get v2 while the API shows v1 ACTIVE (the finding)."""
    lock = RowLock()
    try:
        wait_until(lambda: job(cut.job_id).phase == "health_check", timeout=60, interval=0.05)
        lock.hold(cut.v1_release)  # the switch moves traffic, then blocks retiring v1
        wait_until(lambda: _switched(job(cut.job_id), cut.app["id"], cut.v2_release), timeout=60)
        kill()
    finally:
        lock.release()
    statuses = (release(cut.v1_release).status, release(cut.v2_release).status)
    assert statuses == ("ACTIVE", "DEPLOYING")
    assert "site-v2" in {fetch(cut.url) for _ in range(6)}


def agreed(cut: Interrupted) -> str | None:
    """The ACTIVE version's marker once the database and what users get agree: one ACTIVE
    release, HAProxy's ready servers exactly its replicas, every answer its version."""
    rows = [r for r in releases(cut.app["id"]) if r.environment == "production"]
    active = [r for r in rows if r.status == "ACTIVE"]
    if len(active) != 1:
        return None
    ready = {s.name for s in router_servers(cut.app["id"]) if s.state == "ready"}
    if ready != {f"sw-{active[0].id}-{i}" for i in range(active[0].replicas)}:
        return None
    marker = cut.markers[active[0].version_id]
    return marker if {fetch(cut.url) for _ in range(4)} == {marker} else None


@dataclass(frozen=True)
class Recovery:
    """Seconds from the restart (processes spawned) and from shipway being back (the
    processes this way back needs were up: the relay's periodic tasks, and for a resumed
    job its worker; the rest is process start-up) until agreement."""

    total: float
    since_up: float


def restart(stack: Stack, cut: Interrupted, *, expect: str, tag: str = "") -> Recovery:
    """Start a worker and a relay (shipway is back); how long until the database and the
    router agree on ``expect`` (v1: the relay gives the route back; v2: the worker's
    resumed attempt completes the switch)."""
    earlier = _relay_starts(stack)
    started = time.monotonic()
    worker = stack.start_worker(f"survivor{tag}", wait=False)
    relay = stack.start_relay(wait=False)
    marker = wait_until(
        lambda: agreed(cut),
        timeout=60,
        interval=0.1,
        message=lambda: (
            f"no agreement: {[(r.id, r.status) for r in releases(cut.app['id'])]}, "
            f"router {router_servers(cut.app['id'])}"
        ),
    )
    agreed_at, agreed_wall = time.monotonic(), datetime.now()
    assert marker == expect
    up = [_logged_at(relay, RELAY_STARTED, earlier)]
    if expect == "site-v2":
        up.append(_logged_at(worker, f"{worker.name}@e2e ready.", 0))
    recovery = Recovery(total=agreed_at - started, since_up=(agreed_wall - max(up)).total_seconds())
    print(
        f"\nswitch recovery: agreement on {marker} {recovery.total:.1f}s after the restart, "
        f"{recovery.since_up:.1f}s after the processes it needs were up"
    )
    return recovery


def _logged_at(service: Service, needle: str, index: int) -> datetime:
    """When ``service`` logged its ``index``-th line holding ``needle`` (its log's clock)."""
    line = [line for line in service.log().splitlines() if needle in line][index]
    return datetime.strptime(line.lstrip("[")[:23], "%Y-%m-%d %H:%M:%S,%f")


def _relay_starts(stack: Stack) -> int:
    """How often the relay's log (one per name, appended to) says it started."""
    try:
        return (stack.supervisor.log_dir / "relay.log").read_text().count(RELAY_STARTED)
    except FileNotFoundError:
        return 0


def finish(cut: Interrupted, *, phases_after_kill: list[str]) -> None:
    """The lost job resumes and succeeds; v2 serves and everything agrees."""
    ended = wait_for_job(cut.job_id, timeout=120)
    assert ended.state == "succeeded", (ended.failure_reason, ended.failure_diagnostics)
    assert ended.attempts == 2
    assert [name for name, _ in phases(cut.job_id)][3:] == phases_after_kill
    wait_until(lambda: release(cut.v1_release).status == "RETIRED", timeout=60)
    assert release(cut.v2_release).status == "ACTIVE"
    assert {fetch(cut.url) for _ in range(6)} == {"site-v2"}
    cut.sampler.stop.set()
    cut.sampler.join(5)
    assert cut.sampler.samples > 0 and cut.sampler.most == 1
    assert_consistent(cut.app["id"])


def test_a_restart_gives_the_route_back_to_the_active_release_within_seconds(
    rollout_stack: Stack, api: TestClient, site_images: dict[str, SiteImage]
) -> None:
    cut = interrupt_switch(rollout_stack, api, site_images)
    recovery = restart(rollout_stack, cut, expect="site-v1")
    assert recovery.since_up < RECOVERY_BOUND_SECONDS
    lost = job(cut.job_id)
    assert (lost.state, lost.attempts) == ("running", 1)  # its lease did not end the window
    servers = {s.name: s.state for s in router_servers(cut.app["id"])}
    assert {n: s for n, s in servers.items() if n.startswith(f"sw-{cut.v2_release}-")} == {
        f"sw-{cut.v2_release}-0": "drain",
        f"sw-{cut.v2_release}-1": "drain",
    }
    owners = {c.labels.get("shipway.release") for c in deployment_containers(cut.app["id"])}
    assert owners <= {cut.v1_release, cut.v2_release}  # no orphan
    # requeued (at once here; after its lease in tests/chaos/test_switch_restart.py), the
    # job deploys v2 again: health checked, switched
    requeue(cut.job_id)
    finish(cut, phases_after_kill=["scale", "health_check", "switch", "drain", "retire"])


def test_an_haproxy_killed_too_comes_back_without_the_unrecorded_switch(
    rollout_stack: Stack, api: TestClient, site_images: dict[str, SiteImage]
) -> None:
    """HAProxy died with shipway, its saved state holding v2's servers ready: the relay's
    router watch starts it again with them draining, as no job holds the route."""
    from shipway.router.current import router_config
    from tests.chaos.test_haproxy_kill import haproxy_pid

    cut = interrupt_switch(rollout_stack, api, site_images)
    pid = haproxy_pid(Path(rollout_stack.settings["SHIPWAY_ROUTER_DIR"]))
    assert pid is not None
    os.killpg(pid, signal.SIGKILL)  # master and workers
    wait_until(lambda: not router_config().is_running(), timeout=10)
    recovery = restart(rollout_stack, cut, expect="site-v1")
    assert recovery.since_up < RECOVERY_BOUND_SECONDS
    requeue(cut.job_id)
    finish(cut, phases_after_kill=["scale", "health_check", "switch", "drain", "retire"])


def requeue(job_id: str) -> None:
    """What the start-up recovery of a dead instance's leases does: the lease ends now and
    the job is requeued for another attempt."""
    with transaction() as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(lease_expires_at=utcnow() - timedelta(seconds=1))
        )
    reap_once(session_factory())  # unless a running relay's reaper took it first
    row = job(job_id)
    assert row.state == "queued" or row.attempts == 2, (row.state, row.attempts)


def test_shipway_up_killed_in_the_switch_agrees_within_seconds_of_its_restart(
    rollout_stack: Stack, site_images: dict[str, SiteImage], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The finding as reported, on ``shipway up`` (its API, periodic tasks and supervised
    workers; PostgreSQL here, for the row lock): SIGKILL of up and its workers between the
    router switch and the commit, then a new ``shipway up``. Its start-up recovery takes the
    job back and the resumed attempt completes the switch the router made."""
    from tests.e2e.embedded_support import start_up, token_client, worker_pids_of

    stack = rollout_stack
    stack.settings.update(DEFAULT_LEASE)
    for key, value in DEFAULT_LEASE.items():
        monkeypatch.setenv(key, value)
    first, base_url = start_up(stack, "up-1")
    token = {"Authorization": token_client(stack, base_url).headers["Authorization"]}
    client = httpx.Client(base_url=base_url, timeout=30)
    app = create_deployment(client, token)
    cut = promote_over_v1(client, app, site_images)
    workers = worker_pids_of(first)

    def kill() -> None:
        os.kill(first.pid, signal.SIGKILL)
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        first.process.wait(timeout=10)

    kill_in_switch(cut, kill)
    started = time.monotonic()
    start_up(stack, "up-2")
    answering = time.monotonic()
    assert wait_until(lambda: agreed(cut), timeout=60, interval=0.1) == "site-v2"
    agreed_at = time.monotonic()
    print(
        f"\nswitch recovery (shipway up): agreement {agreed_at - started:.1f}s after the "
        f"restart, {agreed_at - answering:.1f}s after its API answered"
    )
    assert agreed_at - answering < RECOVERY_BOUND_SECONDS
    finish(cut, phases_after_kill=["switch", "drain", "retire"])
