"""Health monitor (ACTIVE ⇄ UNHEALTHY, auto-rollback) and auto-promote, on the real database.

Releases are recorded straight in the database; their "replicas" are a local HTTP
server whose health answer the test flips, reported by a stand-in runtime, so the
monitor's real probes, thresholds, transitions and Events are exercised without
containers (tests/e2e/test_policies.py does it with real ones and HAProxy).
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from shipway.ids import new_id, utcnow
from shipway.runtime.base import Replica
from tests.conftest import VersionFactory, auth


class Site:
    """A tiny HTTP server: ``/healthz`` answers ``status`` (settable)."""

    def __init__(self) -> None:
        self.status = 200
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = b"ok\n" if site.status < 400 else b"broken\n"
                self.send_response(site.status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class FakeRuntime:
    """Reports one running replica per release, listening on the test site's port."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.stopped: set[str] = set()

    def replicas(self, selector: dict[str, str]) -> list[Replica]:
        release_id = selector["shipway.release"]
        running = release_id not in self.stopped
        return [
            Replica(
                id=f"c-{release_id}",
                name=f"sw-{release_id}-0",
                labels={"shipway.release": release_id},
                status="running" if running else "exited",
                exit_code=None if running else 137,
                restart_count=0,
                host_port=self.port,
                address="127.0.0.1",
            )
        ]

    def replicas_by_label(self, key: str, values: Collection[str]) -> dict[str, list[Replica]]:
        return {value: self.replicas({key: value}) for value in values}


@pytest.fixture
def site() -> Iterator[Site]:
    server = Site()
    yield server
    server.close()


def set_policy(client: TestClient, deployment: dict[str, Any], env: str, body: Any) -> None:
    response = client.put(
        f"/api/v1/deployments/{deployment['id']}/environments/{env}/policy",
        json=body,
        headers=auth(deployment["token"]),
    )
    assert response.status_code == 200, response.text


def record_release(
    deployment_id: str,
    version_id: str,
    env: str,
    *,
    status: str = "ACTIVE",
    deployed_at: datetime | None = None,
    expires_in: timedelta | None = None,
) -> str:
    """A release row as a finished rollout leaves it (and the environment's pointer)."""
    from sqlalchemy import update

    from shipway.catalog.models import Deployment, Environment, Release
    from shipway.db import transaction
    from shipway.deployments.service import ensure_environment

    with transaction() as session:
        deployment = session.get(Deployment, deployment_id)
        assert deployment is not None
        ensure_environment(session, deployment=deployment, name=env)
        release = Release(
            id=new_id("rel"),
            workspace_id=deployment.workspace_id,
            deployment_id=deployment_id,
            version_id=version_id,
            environment=env,
            status=status,
            replicas=1,
            rollback_count=0,
            deployed_at=deployed_at or utcnow(),
            image_expires_at=(utcnow() + expires_in) if expires_in else None,
            rollout={},
            created_at=deployed_at or utcnow(),
            updated_at=utcnow(),
        )
        session.add(release)
        session.flush()
        if status == "ACTIVE":
            session.execute(
                update(Environment)
                .where(Environment.deployment_id == deployment_id, Environment.name == env)
                .values(active_release_id=release.id)
            )
        return release.id


def release_row(release_id: str) -> Any:
    from shipway.catalog.models import Release
    from shipway.db import session_factory

    with session_factory()() as session:
        row = session.get(Release, release_id)
        assert row is not None
        session.expunge(row)
        return row


def events_of(subject_id: str) -> list[Any]:
    from shipway.db import session_factory
    from shipway.events.models import Event

    with session_factory()() as session:
        rows = list(
            session.scalars(select(Event).where(Event.subject_id == subject_id).order_by(Event.id))
        )
        for row in rows:
            session.expunge(row)
        return rows


def jobs_of(deployment_id: str) -> list[Any]:
    from shipway.db import session_factory
    from shipway.jobs.models import Job

    with session_factory()() as session:
        rows = list(
            session.scalars(
                select(Job).where(Job.deployment_id == deployment_id).order_by(Job.created_at)
            )
        )
        for row in rows:
            session.expunge(row)
        return rows


class Clock:
    """Monitor passes at chosen instants (the policy interval is respected between them)."""

    def __init__(self) -> None:
        self.now = utcnow()

    def tick(self, seconds: float = 1.0) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


def monitor(runtime: FakeRuntime, clock: Clock, seconds: float = 1.0) -> Any:
    from shipway.releases.monitor import monitor_once

    return monitor_once(runtime=runtime, now=clock.tick(seconds))  # type: ignore[arg-type]


FAST_HEALTH = {
    "interval_seconds": 1,
    "failure_threshold": 2,
    "success_threshold": 2,
    "timeout_seconds": 1,
}


# --------------------------------------------------------------------------- the verdicts


def test_judge_counts_rounds_and_resets_on_a_new_activation() -> None:
    from shipway.deployments.policy import HealthMonitoring
    from shipway.releases.monitor_state import judge

    policy = HealthMonitoring(failure_threshold=2, success_threshold=2)
    bad, good = {"ok": False}, {"ok": True}
    first = judge(status="ACTIVE", health=None, round_=bad, policy=policy, epoch="e1")
    assert first.to_state is None and first.health["consecutive_failures"] == 1
    second = judge(status="ACTIVE", health=first.health, round_=bad, policy=policy, epoch="e1")
    assert second.to_state == "UNHEALTHY"
    assert second.health["recent_failures"] == [bad, bad]
    # Counters of an earlier activation (e.g. before a warm rollback) do not carry over.
    fresh = judge(status="ACTIVE", health=first.health, round_=bad, policy=policy, epoch="e2")
    assert fresh.to_state is None and fresh.health["consecutive_failures"] == 1
    # Passing rounds interleaved with failures never reach the threshold.
    healed = judge(status="ACTIVE", health=first.health, round_=good, policy=policy, epoch="e1")
    assert healed.health["consecutive_failures"] == 0
    one = judge(status="UNHEALTHY", health=second.health, round_=good, policy=policy, epoch="e1")
    assert one.to_state is None
    two = judge(status="UNHEALTHY", health=one.health, round_=good, policy=policy, epoch="e1")
    assert two.to_state == "ACTIVE" and two.health["recent_failures"] == []


def test_find_replicas_looks_up_every_release_at_once_sorted_by_name() -> None:
    from shipway.deployments.policy import parse_policy
    from shipway.releases.monitor import find_replicas
    from shipway.releases.monitor_rounds import Candidate

    class Listing(FakeRuntime):
        """Three replicas a release, listed out of order; counts lookups."""

        def __init__(self) -> None:
            super().__init__(port=1)
            self.lookups: list[list[str]] = []

        def replicas_by_label(self, key: str, values: Collection[str]) -> dict[str, list[Replica]]:
            self.lookups.append(list(values))
            found = super().replicas_by_label(key, values)
            return {
                value: [replace(one, name=f"{one.name}-{n}") for one in ones for n in (2, 0, 1)]
                for value, ones in found.items()
            }

    engine = Listing()
    candidates = [
        Candidate(release_id=f"rel-{n}", status="ACTIVE", path="/", policy=parse_policy(None))
        for n in range(16)
    ]
    find_replicas(engine, candidates)  # type: ignore[arg-type]  # a stand-in runtime
    assert engine.lookups == [[c.release_id for c in candidates]]  # one lookup for all
    for candidate in candidates:
        names = [r.name for r in candidate.replicas]
        assert names == [f"sw-{candidate.release_id}-0-{n}" for n in (0, 1, 2)]


# --------------------------------------------------------------------------- the monitor


def test_failing_probes_make_a_release_unhealthy_and_passing_ones_recover_it(
    client: TestClient,
    deployment: dict[str, Any],
    make_version: VersionFactory,
    site: Site,
) -> None:
    set_policy(client, deployment, "production", {"health": FAST_HEALTH})
    release_id = record_release(deployment["id"], make_version(deployment["id"]), "production")
    runtime, clock = FakeRuntime(site.port), Clock()

    assert monitor(runtime, clock).probed == 1
    row = release_row(release_id)
    assert row.status == "ACTIVE" and row.health["consecutive_successes"] == 1
    assert row.health["last_round"]["replicas"][0]["status_code"] == 200
    # Not due again before the policy's interval.
    assert monitor(runtime, clock, 0.3).probed == 0

    site.status = 500
    assert monitor(runtime, clock).unhealthy == []  # 1 of 2 failures
    report = monitor(runtime, clock)
    assert report.unhealthy == [release_id]
    row = release_row(release_id)
    assert row.status == "UNHEALTHY" and row.unhealthy_since is not None
    assert row.failure_reason == "unhealthy"
    diagnostics = row.failure_diagnostics
    assert set(diagnostics) == {"title", "description", "action", "evidence"}
    assert "HTTP 500" in diagnostics["description"], diagnostics
    rounds = diagnostics["evidence"]["rounds"]
    assert len(rounds) == 2 and rounds[-1]["replicas"][0]["body_excerpt"] == "broken\n"
    shown = client.get(
        f"/api/v1/deployments/{deployment['id']}", headers=auth(deployment["token"])
    ).json()
    assert shown["environments"][0]["status"] == "UNHEALTHY"

    site.status = 200
    assert monitor(runtime, clock).recovered == []  # success_threshold is 2
    assert monitor(runtime, clock).recovered == [release_id]
    row = release_row(release_id)
    assert row.status == "ACTIVE" and row.recovered_at is not None
    assert row.failure_reason is None and row.unhealthy_since is None
    transitions = [
        (e.from_state, e.to_state, e.actor) for e in events_of(release_id) if e.from_state
    ]
    assert transitions == [
        ("ACTIVE", "UNHEALTHY", "health-monitor"),
        ("UNHEALTHY", "ACTIVE", "health-monitor"),
    ]
    assert jobs_of(deployment["id"]) == []  # auto-rollback is off by default


def test_a_stopped_replica_fails_the_round(
    client: TestClient, deployment: dict[str, Any], make_version: VersionFactory, site: Site
) -> None:
    set_policy(
        client, deployment, "production", {"health": {**FAST_HEALTH, "failure_threshold": 1}}
    )
    release_id = record_release(deployment["id"], make_version(deployment["id"]), "production")
    runtime, clock = FakeRuntime(site.port), Clock()
    runtime.stopped.add(release_id)
    assert monitor(runtime, clock).unhealthy == [release_id]
    diagnostics = release_row(release_id).failure_diagnostics
    assert "container exited (exit code 137)" in diagnostics["description"], diagnostics


def test_a_running_rollout_owns_its_environment(
    client: TestClient, deployment: dict[str, Any], make_version: VersionFactory, site: Site
) -> None:
    """While a promote of the environment runs, the monitor leaves its releases alone."""
    set_policy(
        client, deployment, "production", {"health": {**FAST_HEALTH, "failure_threshold": 1}}
    )
    release_id = record_release(deployment["id"], make_version(deployment["id"]), "production")
    promoted = client.post(
        f"/api/v1/deployments/{deployment['id']}/versions/{make_version(deployment['id'])}/promote",
        headers=auth(deployment["token"], **{"Idempotency-Key": "k1"}),
    )
    assert promoted.status_code == 202, promoted.text
    from shipway.db import transaction
    from shipway.jobs import lease

    with transaction() as session:
        assert lease.claim(session, job_id=promoted.json()["job"]["id"], owner="test/1/x")
    site.status = 503
    runtime, clock = FakeRuntime(site.port), Clock()
    assert monitor(runtime, clock).probed == 0
    assert release_row(release_id).status == "ACTIVE"


def test_auto_rollback_queues_a_rollback_to_the_previous_retained_version(
    client: TestClient, deployment: dict[str, Any], make_version: VersionFactory, site: Site
) -> None:
    set_policy(
        client,
        deployment,
        "production",
        {"health": FAST_HEALTH, "auto_rollback_on_unhealthy": True},
    )
    old_version = make_version(deployment["id"], "archived")
    old = record_release(
        deployment["id"],
        old_version,
        "production",
        status="RETIRED",
        deployed_at=utcnow() - timedelta(hours=1),
        expires_in=timedelta(days=1),
    )
    current = record_release(deployment["id"], make_version(deployment["id"]), "production")
    runtime, clock = FakeRuntime(site.port), Clock()
    site.status = 404
    monitor(runtime, clock)
    report = monitor(runtime, clock)
    assert report.unhealthy == [current] and len(report.rollback_jobs) == 1
    job_id = report.rollback_jobs[0][0]

    [job] = jobs_of(deployment["id"])
    assert job.id == job_id and job.kind == "rollback" and job.version_id == old_version
    assert job.actor == "policy:auto_rollback_on_unhealthy"
    assert job.environment == "production" and job.state == "queued"
    row = release_row(current)
    assert row.status == "UNHEALTHY"
    assert row.failure_reason == "unhealthy"
    assert row.failure_diagnostics["evidence"]["auto_rollback"]["job_id"] == job_id
    assert row.health["auto_rollback"]["to_version_id"] == old_version
    why = [e for e in events_of(current) if e.actor == "policy:auto_rollback_on_unhealthy"]
    assert len(why) == 1 and why[0].job_id == job_id
    assert "auto rollback to version 1 queued" in why[0].reason
    assert why[0].data["evidence"]["rounds"][-1]["replicas"][0]["status_code"] == 404
    assert old != current

    # Still failing: no second rollback in the same episode.
    for _ in range(3):
        assert monitor(runtime, clock).rollback_jobs == []
    assert len(jobs_of(deployment["id"])) == 1


def test_auto_rollback_without_a_retained_version_records_why_and_stays_unhealthy(
    client: TestClient, deployment: dict[str, Any], make_version: VersionFactory, site: Site
) -> None:
    set_policy(
        client,
        deployment,
        "production",
        {"health": {**FAST_HEALTH, "failure_threshold": 1}, "auto_rollback_on_unhealthy": True},
    )
    expired = make_version(deployment["id"], "archived")
    record_release(
        deployment["id"],
        expired,
        "production",
        status="RETIRED",
        deployed_at=utcnow() - timedelta(days=30),
        expires_in=timedelta(days=-1),  # past its rollback window
    )
    current = record_release(deployment["id"], make_version(deployment["id"]), "production")
    site.status = 500
    runtime, clock = FakeRuntime(site.port), Clock()
    report = monitor(runtime, clock)
    assert report.unhealthy == [current] and report.rollback_jobs == []
    for _ in range(2):
        monitor(runtime, clock)
    row = release_row(current)
    assert row.status == "UNHEALTHY"
    assert row.health["auto_rollback"]["outcome"] == "no_rollback_target"
    refused = [e for e in events_of(current) if e.actor == "policy:auto_rollback_on_unhealthy"]
    assert len(refused) == 1, [e.reason for e in refused]  # said once, not every round
    assert refused[0].reason.startswith("auto rollback not possible")
    assert refused[0].data["outcome"] == "no_rollback_target"
    assert jobs_of(deployment["id"]) == []


# --------------------------------------------------------------------------- auto-promote


def test_auto_promote_after_the_healthy_period_once_per_version(
    client: TestClient, deployment: dict[str, Any], make_version: VersionFactory
) -> None:
    from shipway.releases.autopromote import scan_once

    canary = {"type": "canary", "steps": [{"weight": 20, "pause_seconds": 5}]}
    set_policy(client, deployment, "production", {"strategy": canary})
    set_policy(
        client,
        deployment,
        "staging",
        {"auto_promote": {"to_environment": "production", "after_healthy_seconds": 600}},
    )
    version_id = make_version(deployment["id"])
    deployed = utcnow() - timedelta(seconds=590)
    staged = record_release(deployment["id"], version_id, "staging", deployed_at=deployed)

    assert scan_once() == []  # 590 s healthy: not yet
    queued = scan_once(now=deployed + timedelta(seconds=601))
    assert len(queued) == 1
    [job] = jobs_of(deployment["id"])
    assert job.id == queued[0][0] and job.kind == "promote"
    assert job.environment == "production" and job.version_id == version_id
    assert job.actor == "policy:auto_promote:staging->production"
    assert job.params["strategy"] == parse(canary)  # the target environment's default
    why = [e for e in events_of(staged) if e.actor.startswith("policy:auto_promote")]
    assert len(why) == 1 and why[0].job_id == job.id
    assert why[0].data["to_environment"] == "production"
    assert why[0].data["healthy_seconds"] >= 600

    # Idempotent: the version has a release in production now.
    assert scan_once(now=deployed + timedelta(seconds=700)) == []
    assert len(jobs_of(deployment["id"])) == 1


def test_auto_promote_waits_for_a_recovery_and_uses_its_own_strategy(
    client: TestClient, deployment: dict[str, Any], make_version: VersionFactory
) -> None:
    from sqlalchemy import update

    from shipway.catalog.models import Release
    from shipway.db import transaction
    from shipway.releases.autopromote import scan_once

    set_policy(
        client,
        deployment,
        "staging",
        {
            "auto_promote": {
                "to_environment": "production",
                "after_healthy_seconds": 60,
                "strategy": {"type": "all_at_once"},
            }
        },
    )
    set_policy(
        client,
        deployment,
        "production",
        {"strategy": {"type": "canary", "steps": [{"weight": 50}]}},
    )
    version_id = make_version(deployment["id"])
    staged = record_release(
        deployment["id"], version_id, "staging", deployed_at=utcnow() - timedelta(hours=1)
    )
    # It recovered from UNHEALTHY 30 s ago: the healthy period starts again there.
    with transaction() as session:
        session.execute(
            update(Release)
            .where(Release.id == staged)
            .values(recovered_at=utcnow() - timedelta(seconds=30))
        )
    assert scan_once() == []
    # Failing probes (not yet UNHEALTHY) hold it back too.
    with transaction() as session:
        session.execute(
            update(Release).where(Release.id == staged).values(health={"consecutive_failures": 1})
        )
    assert scan_once(now=utcnow() + timedelta(seconds=60)) == []
    with transaction() as session:
        session.execute(
            update(Release).where(Release.id == staged).values(health={"consecutive_failures": 0})
        )
    [queued] = scan_once(now=utcnow() + timedelta(seconds=60))
    [job] = jobs_of(deployment["id"])
    assert job.id == queued[0] and job.params["strategy"] == {"type": "all_at_once"}


def test_no_auto_promote_when_the_version_was_already_there(
    client: TestClient, deployment: dict[str, Any], make_version: VersionFactory
) -> None:
    from shipway.releases.autopromote import scan_once

    set_policy(
        client,
        deployment,
        "staging",
        {"auto_promote": {"to_environment": "production", "after_healthy_seconds": 0}},
    )
    version_id = make_version(deployment["id"], "archived")
    record_release(deployment["id"], version_id, "staging")
    record_release(
        deployment["id"], version_id, "production", status="ROLLED_BACK", expires_in=timedelta(1)
    )
    assert scan_once() == []
    assert jobs_of(deployment["id"]) == []


def parse(strategy: dict[str, Any]) -> dict[str, Any]:
    from shipway.deployments.strategy import parse_strategy

    return parse_strategy(strategy).model_dump(mode="json")
