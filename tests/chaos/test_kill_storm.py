"""Kill storm: worker processes SIGKILLed over and over, in every phase of publish and rollout.

Two real ``shipway worker`` processes, a relay, a ``shipway api`` process, real
PostgreSQL, Redis, Docker and HAProxy. A driver keeps submitting promotes
(alternating between the ready versions of a few 2-replica deployments; promoting
an archived one is a rollback) and publishes of a small static site, through the
API. A killer picks the next target phase round-robin (publish, scale,
health_check, switch, drain, retire), polls the database every 20-50 ms for a
job running in that phase on one of our workers, SIGKILLs that worker's process
group, records what the job was doing, and starts a new worker.

Short phases get help to be caught: versions boot slowly (health_check), each
deployment always has a slow request in flight (drain waits for it), replaced
releases are retired by a separate job after a 1 s scale-down delay (retire),
and for switch the killer holds a row lock on the serving release so the worker
blocks between moving traffic in HAProxy and recording it in the database.

Afterwards: every job is terminal (a job killed on every attempt fails with
``worker_lost``), each attempt was one claim and each job ended once; versions
and releases rest in legal states; engine containers, database rows and HAProxy
servers agree exactly per environment; the sampler never saw two ACTIVE releases
in one environment; each public URL serves its ACTIVE version.
"""

from __future__ import annotations

import collections
import itertools
import random
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from shipway.catalog.models import Release
from shipway.config import get_settings
from shipway.db import session_factory
from shipway.events.models import Event
from shipway.jobs.models import Job
from tests.chaos.support import (
    FULL,
    LONG_SCENARIO,
    RESTING_RELEASE_STATUSES,
    RESTING_VERSION_STATES,
    SCALE,
    ActiveSampler,
    EngineLeftovers,
    RowLock,
    assert_jobs_ran_cleanly,
    describe_jobs,
    lock_waiters,
    release_statuses,
    static_site,
    unique_marker,
    version_states,
    wait_all_terminal,
)
from tests.e2e.conftest import Api, Stack
from tests.e2e.helpers import api_token, owner_pid
from tests.e2e.rollout_support import (
    SiteImage,
    assert_consistent,
    create_deployment,
    deployment_containers,
    public_url,
    site_version,
)
from tests.support.processes import Service, wait_until

pytestmark = [
    pytest.mark.chaos,
    pytest.mark.e2e,
    pytest.mark.timeout(60 * 60 if FULL else 420),
    LONG_SCENARIO,
]

DEPLOYMENTS = 3
SLOW_BOOT = "sh -c 'sleep 1; exec httpd -f -p 8080 -h /srv/www'"
ROLLOUT_PHASES = ("scale", "health_check", "switch", "drain", "retire")
SETTINGS = {
    # Replaced releases are retired by their own (delayed) retire job.
    "SHIPWAY_SCALE_DOWN_DELAY_SECONDS": "1",
    "SHIPWAY_STOP_TIMEOUT_SECONDS": "1",
    "SHIPWAY_DRAIN_TIMEOUT_SECONDS": "4",
    # Not under test here: an UNHEALTHY verdict on a loaded machine would only blur the checks.
    "SHIPWAY_MONITOR_INTERVAL_SECONDS": "0",
}


def configure(stack: Stack, monkeypatch: pytest.MonkeyPatch, settings: dict[str, str]) -> None:
    """Settings for the stack's processes and for this test process."""
    stack.settings.update(settings)
    for key, value in settings.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()


@dataclass
class Site:
    """A rollout deployment, its ready versions and the marker each one serves."""

    deployment: dict[str, Any]
    versions: list[str]
    markers: dict[str, str]
    url: str = ""
    turn: Iterator[int] = field(default_factory=lambda: itertools.cycle(range(3)))


@dataclass
class Tally:
    """What the driver and the traffic threads saw."""

    answers: collections.Counter[str] = field(default_factory=collections.Counter)
    traffic: collections.Counter[str] = field(default_factory=collections.Counter)
    failed: list[tuple[float, str, str]] = field(default_factory=list)  # (when, url, outcome)
    unexpected: list[str] = field(default_factory=list)


class Driver(threading.Thread):
    """Keeps one rollout per deployment and one publish in flight, through the API."""

    def __init__(self, api: Api, token: str, sites: list[Site], static_id: str) -> None:
        super().__init__(daemon=True, name="driver")
        self.api, self.token, self.sites, self.static_id = api, token, sites, static_id
        self.tally = Tally()
        self.stopped = threading.Event()

    def run(self) -> None:
        with self.api.client(self.token) as client:
            while not self.stopped.wait(0.2):
                try:
                    busy = _busy_deployments()
                    for site in self.sites:
                        if site.deployment["id"] not in busy:
                            self._promote(client, site)
                    if self.static_id not in busy:
                        self._publish(client)
                except Exception as error:  # noted, and the storm goes on
                    self.tally.unexpected.append(f"{type(error).__name__}: {error}")

    def _promote(self, client: httpx.Client, site: Site) -> None:
        for _ in range(len(site.versions)):
            version_id = site.versions[next(site.turn)]
            response = client.post(
                f"/api/v1/deployments/{site.deployment['id']}/versions/{version_id}/promote",
                json={"environment": "production"},
                headers={"Idempotency-Key": secrets.token_hex(8)},
            )
            self.tally.answers[f"promote {response.status_code}"] += 1
            if response.status_code == 202:
                return
            code = response.json().get("error", {}).get("code")
            if (response.status_code, code) != (409, "version_already_active"):
                self.tally.unexpected.append(f"promote {response.status_code}: {response.text}")
                return

    def _publish(self, client: httpx.Client) -> None:
        response = client.post(
            f"/api/v1/deployments/{self.static_id}/versions",
            files={
                "source": ("site.tar.gz", static_site(unique_marker("storm")), "application/gzip")
            },
            headers={"Idempotency-Key": secrets.token_hex(8)},
        )
        self.tally.answers[f"publish {response.status_code}"] += 1
        if response.status_code != 202:
            self.tally.unexpected.append(f"publish {response.status_code}: {response.text}")


class Traffic(threading.Thread):
    """One slow request always in flight per site (a drain then has something to wait for)."""

    def __init__(self, sites: list[Site], tally: Tally) -> None:
        super().__init__(daemon=True, name="traffic")
        self.sites, self.tally = sites, tally
        self.stopped = threading.Event()

    def run(self) -> None:
        threads = [threading.Thread(target=self._loop, args=(s,), daemon=True) for s in self.sites]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def _loop(self, site: Site) -> None:
        with httpx.Client(timeout=30) as client:
            while not self.stopped.is_set():
                try:
                    response = client.get(f"{site.url}/cgi-bin/slow?2")
                    self.tally.traffic[str(response.status_code)] += 1
                    if response.status_code != 200:
                        outcome = f"{response.status_code} {response.text.strip()[:60]}"
                        self.tally.failed.append((time.monotonic(), site.url, outcome))
                        time.sleep(0.2)
                except httpx.HTTPError as error:
                    self.tally.traffic[type(error).__name__] += 1
                    self.tally.failed.append((time.monotonic(), site.url, type(error).__name__))
                    time.sleep(0.2)


def _busy_deployments() -> set[str]:
    """Deployments with a job queued or running (a new one would only wait behind it)."""
    with session_factory()() as session:
        rows = session.scalars(
            select(Job.deployment_id).where(Job.state.in_(("queued", "running")))
        ).all()
    return {r for r in rows if r}


# --------------------------------------------------------------------------- the killer


@dataclass
class Kill:
    """One SIGKILL: which job, what it was doing."""

    job_id: str
    kind: str
    target: str
    phase: str
    at: float = field(default_factory=time.monotonic)


class Killer:
    """Finds a job in the target phase on one of our workers and SIGKILLs that worker."""

    def __init__(self, stack: Stack, database_url: str) -> None:
        self.stack, self.database_url = stack, database_url
        self.kills: list[Kill] = []
        self.generation = itertools.count(1)
        self.rng = random.Random()

    def counts(self) -> collections.Counter[str]:
        return collections.Counter(k.target for k in self.kills)

    def hunt(self, target: str, *, seconds: float) -> Kill | None:
        """Try for ``seconds`` to kill a worker while a job is in ``target``."""
        deadline = time.monotonic() + seconds
        if target == "switch":
            return self._hunt_switch(deadline)
        while time.monotonic() < deadline:
            for row in _running_jobs():
                if _matches(row, target) and (
                    target == "publish" or _current_phase(row.id) == target
                ):
                    kill = self._kill(row, target)
                    if kill is not None:
                        return kill
            time.sleep(self.rng.uniform(0.02, 0.05))
        return None

    def _hunt_switch(self, deadline: float) -> Kill | None:
        """Hold the serving release's row: the worker switches HAProxy, then blocks on it."""
        lock = RowLock(self.database_url)
        while time.monotonic() < deadline:
            for row in _running_jobs():
                if row.kind not in ("promote", "rollback"):
                    continue
                if _current_phase(row.id) not in ("scale", "health_check"):
                    continue
                serving = _active_release(row)
                if serving is None or serving == row.release_id:
                    continue
                with lock.held(serving):

                    def blocked(job_id: str = row.id) -> bool | None:
                        job = _job(job_id)
                        if job.state != "running":
                            return False
                        if _current_phase(job_id) == "switch" and lock_waiters(self.database_url):
                            return True
                        return None

                    try:
                        reached = wait_until(blocked, timeout=30, interval=0.02)
                    except AssertionError:
                        reached = None
                    if reached:
                        kill = self._kill(_job(row.id), "switch")
                        if kill is not None:
                            return kill
            time.sleep(self.rng.uniform(0.02, 0.05))
        return None

    def _kill(self, row: Job, target: str) -> Kill | None:
        if row.lease_owner is None:
            return None
        worker = self._worker_of(row.lease_owner)
        if worker is None:
            return None  # its worker is already dead: the lease has not expired yet
        time.sleep(self.rng.uniform(0, 0.03))  # a random moment inside the phase
        worker.kill()
        phase = _current_phase(row.id)
        kind = "publish" if row.kind == "publish" else phase
        kill = Kill(job_id=row.id, kind=row.kind, target=kind, phase=phase)
        self.kills.append(kill)
        slot = worker.name.split("-")[0]
        self.stack.start_worker(f"{slot}-{next(self.generation)}", wait=False)
        return kill

    def _worker_of(self, lease_owner: str) -> Service | None:
        pid = owner_pid(lease_owner)
        for service in self.stack.workers:
            if service.alive() and service.owns(pid):
                return service
        return None


def _running_jobs() -> list[Job]:
    with session_factory()() as session:
        rows = list(session.scalars(select(Job).where(Job.state == "running")))
        for row in rows:
            session.expunge(row)
    random.shuffle(rows)
    return rows


def _job(job_id: str) -> Job:
    with session_factory()() as session:
        row = session.get(Job, job_id)
        assert row is not None
        session.expunge(row)
        return row


def _matches(row: Job, target: str) -> bool:
    if target == "publish":
        return row.kind == "publish"
    return row.kind in ("promote", "rollback", "retire")


def _current_phase(job_id: str) -> str:
    """The phase this attempt is in: the newest phase Event, unless the job was claimed since."""
    with session_factory()() as session:
        event = session.execute(
            select(Event.subject_type, Event.to_state)
            .where(Event.job_id == job_id, Event.subject_type.in_(("job", "job_phase")))
            .order_by(Event.id.desc())
            .limit(1)
        ).first()
    if event is None or event.subject_type != "job_phase":
        return "claimed"  # claimed, first phase not entered yet
    return str(event.to_state)


def _active_release(row: Job) -> str | None:
    with session_factory()() as session:
        return session.scalar(
            select(Release.id).where(
                Release.deployment_id == row.deployment_id,
                Release.environment == row.environment,
                Release.status == "ACTIVE",
            )
        )


# --------------------------------------------------------------------------- the test


@pytest.fixture
def leftovers(stack: Stack) -> Iterator[EngineLeftovers]:
    """Images the publishes built; removed once no worker can build another one."""
    found = EngineLeftovers()
    yield found
    for worker in stack.workers:
        worker.kill()
    found.remove()


def test_kill_storm_leaves_every_job_terminal_and_engine_db_router_in_agreement(
    stack: Stack,
    site_images: dict[str, SiteImage],
    monkeypatch: pytest.MonkeyPatch,
    leftovers: EngineLeftovers,
    chaos_report: Any,
) -> None:
    configure(stack, monkeypatch, SETTINGS)
    database_url = stack.settings["SHIPWAY_DATABASE_URL"]
    stack.start_relay(wait=False)
    workers = [stack.start_worker(f"w{n}-0", wait=False) for n in range(2)]
    api = stack.start_api()
    stack.wait_ready(*workers)
    token = api_token()
    headers = {"Authorization": f"Bearer {token}"}
    client = api.client(token)

    sites = []
    for _ in range(DEPLOYMENTS):
        deployment = create_deployment(client, headers, replicas=2, health={"deadline_seconds": 60})
        leftovers.deployment_ids.append(deployment["id"])
        ready: list[str] = []
        markers: dict[str, str] = {}
        for name in ("v1", "v2", "v3"):
            image = site_images[name]
            version_id = site_version(deployment["id"], image, command=SLOW_BOOT)
            ready.append(version_id)
            markers[version_id] = image.marker
        sites.append(Site(deployment=deployment, versions=ready, markers=markers))
    static = client.post(
        "/api/v1/deployments", json={"name": unique_marker("pub"), "kind": "static"}
    )
    assert static.status_code == 201, static.text
    static_id = static.json()["id"]
    leftovers.deployment_ids.append(static_id)

    # Every environment serves before the storm, so each rollout has a release to replace.
    first = [
        client.post(
            f"/api/v1/deployments/{s.deployment['id']}/versions/{s.versions[0]}/promote",
            json={"environment": "production"},
            headers={"Idempotency-Key": secrets.token_hex(8)},
        )
        for s in sites
    ]
    assert all(r.status_code == 202 for r in first), [r.text for r in first]
    wait_all_terminal(timeout=120)
    for site in sites:
        next(site.turn)  # v1 serves: the driver starts with v2
        site.url = public_url(client, site.deployment)

    sampler = ActiveSampler()
    sampler.start()
    driver = Driver(api, token, sites, static_id)
    traffic = Traffic(sites, driver.tally)
    driver.start()
    traffic.start()
    killer = Killer(stack, database_url)
    started = time.monotonic()
    deadline = started + SCALE.storm_minutes * 60
    try:
        for target in itertools.cycle(SCALE.kill_quota):
            counts = killer.counts()
            if all(counts[t] >= n for t, n in SCALE.kill_quota.items()):
                break
            assert time.monotonic() < deadline, f"storm too slow: {dict(counts)} in {SCALE.name}"
            if counts[target] < SCALE.kill_quota[target]:
                killer.hunt(target, seconds=20)
    finally:
        driver.stopped.set()
        driver.join(30)
    storm_seconds = time.monotonic() - started

    # Every worker that is left finishes what is queued; nothing is killed any more.
    alive = [w for w in stack.workers if w.alive()]
    assert len(alive) == 2, [w.name for w in stack.workers if w.alive()]
    jobs = wait_all_terminal(timeout=600 if FULL else 180)
    traffic.stopped.set()
    traffic.join(60)
    sampler.stop()

    # Jobs: terminal, one claim per attempt, one end each; failures only from lost workers.
    assert_jobs_ran_cleanly(jobs)
    reasons = collections.Counter(j.failure_reason for j in jobs if j.state == "failed")
    assert set(reasons) <= {"worker_lost"}, describe_jobs(jobs)
    assert not driver.tally.unexpected, driver.tally.unexpected[:5]
    # Versions and releases rest in legal states.
    versions = version_states()
    assert set(versions) <= RESTING_VERSION_STATES, versions
    statuses = release_statuses()
    assert set(statuses) <= RESTING_RELEASE_STATUSES, statuses
    # Engine, database and router agree; no orphan container; traffic goes to ACTIVE.
    for site in sites:
        assert_consistent(site.deployment["id"])
        active = [
            r
            for r in _releases(site.deployment["id"])
            if r.status == "ACTIVE" and r.environment == "production"
        ]
        assert len(active) == 1, [(r.id, r.status) for r in _releases(site.deployment["id"])]
        marker = site.markers[active[0].version_id]
        answers = {httpx.get(site.url, timeout=10).text.strip() for _ in range(4)}
        assert answers == {marker}, (answers, marker)
    assert deployment_containers(static_id) == []  # builds leave no container behind
    assert sampler.samples > 0 and sampler.most == 1, (sampler.samples, sampler.most)

    counts = killer.counts()
    per_target = ", ".join(f"{t} {counts[t]}" for t in SCALE.kill_quota)
    chaos_report(
        f"chaos kill storm: {len(killer.kills)} kills ({per_target}) in {storm_seconds:.0f}s; "
        f"jobs {describe_jobs(jobs)}; versions {dict(versions)}; releases {dict(statuses)}; "
        f"requests {dict(driver.tally.answers)}; traffic {dict(driver.tally.traffic)}; "
        f"max ACTIVE per env {sampler.most} ({sampler.samples} samples)"
    )
    # The serving release keeps answering through every kill: a rollout cut short after its
    # switch gives traffic back (its compensation) before anything else.
    if driver.tally.failed:
        chaos_report(f"chaos kill storm: failed requests: {_timeline(driver.tally, killer.kills)}")
    assert not driver.tally.failed, _timeline(driver.tally, killer.kills)


def _timeline(tally: Tally, kills: list[Kill]) -> str:
    """Failed requests (first few), each with the kill that came last before it."""
    lines = []
    for at, url, outcome in tally.failed[:12]:
        before = [k for k in kills if k.at <= at]
        last = before[-1] if before else None
        where = f"{at - last.at:+.1f}s after kill in {last.phase} ({last.kind})" if last else "-"
        lines.append(f"{url} {outcome} {where}")
    return "; ".join(lines)


def _releases(deployment_id: str) -> list[Release]:
    with session_factory()() as session:
        rows = list(session.scalars(select(Release).where(Release.deployment_id == deployment_id)))
        for row in rows:
            session.expunge(row)
        return rows
