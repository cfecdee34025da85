"""Shared pieces of the chaos scenarios: the size knob, job accounting, invariant samplers."""

from __future__ import annotations

import collections
import contextlib
import os
import secrets
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import docker
import docker.errors
import pytest
from sqlalchemy import func, select, text

from shipway.catalog.models import Release, Version
from shipway.db import engine_for, session_factory
from shipway.events.models import Event
from shipway.jobs.machine import TERMINAL_JOB_STATES
from shipway.jobs.models import Job
from tests.support.processes import wait_until
from tests.test_archive import Entry, tar_bytes

# Release statuses a release may rest in once no rollout runs.
RESTING_RELEASE_STATUSES = {"ACTIVE", "UNHEALTHY", "DRAINING", "RETIRED", "FAILED", "ROLLED_BACK"}
RESTING_VERSION_STATES = {"ready", "failed", "archived"}


@dataclass(frozen=True)
class ChaosScale:
    """How big each scenario is."""

    name: str
    kill_quota: dict[str, int]  # kills per target: publish, scale, health_check, …
    storm_minutes: float  # the kill storm gives up (and fails) after this long
    requests: int  # publish/promote requests during the Redis outage
    publish_share: float  # of those, the fraction that are publishes
    outage_seconds: float
    pg_jobs: int  # noop jobs in flight across the PostgreSQL restart
    haproxy_kills: int

    @property
    def kills(self) -> int:
        return sum(self.kill_quota.values())


SCALES = {
    "smoke": ChaosScale(
        name="smoke",
        kill_quota={
            "publish": 2,
            "scale": 2,
            "health_check": 2,
            "switch": 2,
            "drain": 1,
            "retire": 1,
        },
        storm_minutes=4,
        requests=60,
        publish_share=0.1,
        outage_seconds=5,
        pg_jobs=8,
        haproxy_kills=1,
    ),
    "full": ChaosScale(
        name="full",
        kill_quota={
            "publish": 20,
            "scale": 20,
            "health_check": 20,
            "switch": 20,
            "drain": 20,
            "retire": 20,
        },
        storm_minutes=40,
        requests=500,
        publish_share=0.1,
        outage_seconds=30,
        pg_jobs=30,
        haproxy_kills=3,
    ),
}


def _scale() -> ChaosScale:
    name = os.environ.get("SHIPWAY_CHAOS_SCALE", "smoke") or "smoke"
    if name not in SCALES:
        raise ValueError(f"SHIPWAY_CHAOS_SCALE={name!r}: use one of {sorted(SCALES)}")
    return SCALES[name]


SCALE = _scale()
FULL = SCALE.name == "full"

LONG_SCENARIO = pytest.mark.skipif(
    "SHIPWAY_CHAOS_SCALE" not in os.environ,
    reason="a long chaos scenario (45 s even at smoke size), left out of make test to keep it "
    "under 20 minutes: make test-chaos runs it (or SHIPWAY_CHAOS_SCALE=smoke|full)",
)
"""Marks the scenarios ``make test`` leaves to ``make test-chaos`` (the kill storm and the
Redis outage, which tests/e2e/test_broker_outage.py and test_rollout_crashes.py cover in
small); the shorter ones (PostgreSQL restart, HAProxy kill) stay in ``make test``."""


# --------------------------------------------------------------------------- sources


def static_site(marker: str) -> bytes:
    """A tar.gz static site unique to ``marker`` (no build cache reuse between publishes)."""
    index = f"<!doctype html><title>{marker}</title><h1>{marker}</h1>\n".encode()
    return tar_bytes([Entry("index.html", index), Entry("healthz", b"ok\n")], gz=True)


def unique_marker(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


# --------------------------------------------------------------------------- reads


def jobs_of(workspace_ids: Iterable[str] | None = None) -> list[Job]:
    """Every job of the database (detached)."""
    with session_factory()() as session:
        query = select(Job).order_by(Job.created_at, Job.id)
        if workspace_ids is not None:
            query = query.where(Job.workspace_id.in_(list(workspace_ids)))
        rows = list(session.scalars(query))
        for row in rows:
            session.expunge(row)
        return rows


def wait_all_terminal(*, timeout: float) -> list[Job]:
    """Poll until every job of the database is terminal; returns them."""

    def ended() -> list[Job] | None:
        rows = jobs_of()
        return rows if all(j.state in TERMINAL_JOB_STATES for j in rows) else None

    def pending() -> str:
        rows = [j for j in jobs_of() if j.state not in TERMINAL_JOB_STATES]
        return "; ".join(
            f"{j.id} {j.kind} {j.state} phase={j.phase} attempts={j.attempts}"
            f" owner={j.lease_owner} not_before={j.not_before}"
            for j in rows[:20]
        )

    return wait_until(ended, timeout=timeout, interval=0.5, message=pending)


def job_transitions() -> dict[str, list[tuple[str | None, str | None]]]:
    """Every job's state transitions (from, to) in order, by job id."""
    with session_factory()() as session:
        rows = session.execute(
            select(Event.job_id, Event.from_state, Event.to_state)
            .where(Event.subject_type == "job", Event.job_id.is_not(None))
            .order_by(Event.id)
        ).all()
    found: dict[str, list[tuple[str | None, str | None]]] = collections.defaultdict(list)
    for job_id, from_state, to_state in rows:
        if from_state != to_state:
            found[str(job_id)].append((from_state, to_state))
    return found


def assert_jobs_ran_cleanly(jobs: list[Job]) -> None:
    """Each attempt is one claim, each job ends exactly once (Events agree with the row)."""
    paths = job_transitions()
    for job in jobs:
        path = paths[job.id]
        claims = sum(1 for _, to in path if to == "running")
        ends = [to for _, to in path if to in TERMINAL_JOB_STATES]
        assert claims == job.attempts, (job.id, job.kind, job.attempts, path)
        assert ends == [job.state], (job.id, job.kind, path)


def version_states() -> collections.Counter[str]:
    with session_factory()() as session:
        return collections.Counter(
            str(state) for state in session.scalars(select(Version.state)).all()
        )


def release_statuses() -> collections.Counter[str]:
    with session_factory()() as session:
        return collections.Counter(
            str(status) for status in session.scalars(select(Release.status)).all()
        )


def describe_jobs(jobs: list[Job]) -> str:
    """``180: 150 succeeded, 25 failed (worker_lost 20, …), 5 cancelled``."""
    states = collections.Counter(j.state for j in jobs)
    reasons = collections.Counter(j.failure_reason or "?" for j in jobs if j.state == "failed")
    parts = []
    for state in ("succeeded", "failed", "cancelled"):
        if not states[state]:
            continue
        part = f"{states[state]} {state}"
        if state == "failed":
            part += " (" + ", ".join(f"{r} {n}" for r, n in reasons.most_common()) + ")"
        parts.append(part)
    return f"{len(jobs)}: " + ", ".join(parts)


class ActiveSampler(threading.Thread):
    """Every 50 ms, the most ACTIVE releases any (deployment, environment) has; remembers it."""

    def __init__(self) -> None:
        super().__init__(daemon=True, name="active-sampler")
        self.most = 0
        self.samples = 0
        self.errors = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        maker = session_factory()
        while not self.stopped.wait(0.05):
            try:
                with maker() as session:
                    counts = session.execute(
                        select(func.count())
                        .select_from(Release)
                        .where(Release.status == "ACTIVE")
                        .group_by(Release.deployment_id, Release.environment)
                    ).all()
            except Exception:  # a database restart: sample again next time
                self.errors += 1
                continue
            self.most = max([self.most, *(int(c[0]) for c in counts)])
            self.samples += 1

    def stop(self) -> None:
        self.stopped.set()
        self.join(10)


class RowLock:
    """A ``SELECT … FOR UPDATE`` on one release row, held until released."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.connection: Any = None

    def hold(self, release_id: str) -> None:
        self.connection = engine_for(self.database_url).connect()
        self.connection.begin()
        self.connection.execute(
            text("SELECT id FROM releases WHERE id = :id FOR UPDATE"), {"id": release_id}
        )

    def release(self) -> None:
        if self.connection is not None:
            with contextlib.suppress(Exception):
                self.connection.rollback()
            self.connection.close()
            self.connection = None

    @contextlib.contextmanager
    def held(self, release_id: str) -> Iterator[RowLock]:
        self.hold(release_id)
        try:
            yield self
        finally:
            self.release()


def lock_waiters(database_url: str) -> int:
    """Backends of this database blocked on a lock (a worker waiting for our row lock)."""
    with engine_for(database_url).connect() as conn:
        return int(
            conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            ).scalar_one()
        )


@dataclass
class EngineLeftovers:
    """Images (and containers) the engine holds for deployments of one test."""

    deployment_ids: list[str] = field(default_factory=list)

    def remove(self) -> None:
        client = docker.from_env()
        try:
            for deployment_id in self.deployment_ids:
                selector = {"label": f"shipway.deployment={deployment_id}"}
                for container in client.containers.list(all=True, filters=selector):
                    with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                        container.remove(force=True)
                for image in client.images.list(filters=selector):
                    with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                        client.images.remove(image.id, force=True)
        finally:
            client.close()
