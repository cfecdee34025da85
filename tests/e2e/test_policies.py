"""Environment policies with real containers, HAProxy, a Celery worker and the relay.

- auto-promote: v1 ACTIVE in staging for ``after_healthy_seconds`` is promoted to
  production by the relay (an ordinary promote job, actor
  ``policy:auto_promote:staging->production``), once;
- health after ACTIVE: a replica whose health file is deleted inside its running
  container (``docker exec rm``) makes the release UNHEALTHY, putting the file back
  recovers it; with ``auto_rollback_on_unhealthy`` the relay rolls the
  environment back to the previous version, and says why.

The API runs in this process; the worker and relay are real ``shipway``
processes with short monitor and auto-promote intervals.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import docker
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from shipway.db import session_factory
from shipway.events.models import Event
from shipway.jobs.models import Job
from tests.e2e.conftest import Stack
from tests.e2e.helpers import api_token, wait_for_job
from tests.e2e.rollout_support import (
    SiteImage,
    assert_consistent,
    containers,
    create_deployment,
    fetch,
    promote,
    public_url,
    release,
    releases,
    rollout_stack,
    site_images,
    site_version,
)
from tests.support.processes import wait_until

pytestmark = pytest.mark.e2e
__all__ = ["rollout_stack", "site_images"]  # fixtures, imported for pytest

POLICY_SETTINGS = {
    "SHIPWAY_MONITOR_INTERVAL_SECONDS": "0.2",
    "SHIPWAY_AUTO_PROMOTE_INTERVAL_SECONDS": "0.3",
}
FAST_HEALTH = {
    "interval_seconds": 0.3,
    "failure_threshold": 2,
    "success_threshold": 1,
    "timeout_seconds": 1,
}


@pytest.fixture
def api(rollout_stack: Stack) -> Iterator[TestClient]:
    """The API in this process; a worker and the relay (monitor, auto-promote) running."""
    from shipway.api import create_app

    rollout_stack.settings.update(POLICY_SETTINGS)
    rollout_stack.start_relay()
    rollout_stack.start_worker("w1", queues="rollouts")
    with TestClient(create_app(), raise_server_exceptions=False) as client:
        yield client


def put_policy(client: TestClient, app: dict[str, Any], env: str, policy: dict[str, Any]) -> None:
    response = client.put(
        f"/api/v1/deployments/{app['id']}/environments/{env}/policy",
        json=policy,
        headers={"Authorization": app["token"]["Authorization"]},
    )
    assert response.status_code == 200, response.text


def rollout_jobs(deployment_id: str, environment: str) -> list[Job]:
    with session_factory()() as session:
        rows = list(
            session.scalars(
                select(Job)
                .where(
                    Job.deployment_id == deployment_id,
                    Job.environment == environment,
                    Job.kind.in_(("promote", "rollback")),
                )
                .order_by(Job.created_at)
            )
        )
        for row in rows:
            session.expunge(row)
        return rows


def release_events(release_id: str) -> list[Event]:
    with session_factory()() as session:
        rows = list(
            session.scalars(select(Event).where(Event.subject_id == release_id).order_by(Event.id))
        )
        for row in rows:
            session.expunge(row)
        return rows


def in_replica(release_id: str, *command: str) -> None:
    """Run a command inside the release's (single) replica container."""
    [replica] = containers(release_id)
    client = docker.from_env()
    try:
        exit_code, output = client.containers.get(replica.id).exec_run(list(command))
    finally:
        client.close()
    assert exit_code == 0, output


def wait_for_status(release_id: str, status: str, *, timeout: float = 20) -> None:
    wait_until(
        lambda: release(release_id).status == status,
        timeout=timeout,
        interval=0.1,
        message=lambda: f"{release_id} is {release(release_id).status}, wanted {status}",
    )


def test_auto_promote_staging_to_production_after_the_healthy_period(
    api: TestClient, site_images: dict[str, SiteImage]
) -> None:
    app = create_deployment(api, {"Authorization": f"Bearer {api_token()}"}, replicas=1)
    put_policy(
        api,
        app,
        "staging",
        {
            "health": FAST_HEALTH,
            "auto_promote": {"to_environment": "production", "after_healthy_seconds": 3},
        },
    )
    v1 = site_version(app["id"], site_images["v1"])
    staged = promote(api, app, v1, environment="staging")
    assert wait_for_job(staged["job"]["id"], timeout=60).state == "succeeded"
    staging = release(staged["release"]["id"])
    assert staging.status == "ACTIVE" and staging.deployed_at is not None
    assert fetch(public_url(api, app, "staging")) == "site-v1"
    assert rollout_jobs(app["id"], "production") == []

    [job] = wait_until(
        lambda: rollout_jobs(app["id"], "production"),
        timeout=30,
        interval=0.1,
        message="no auto promote to production",
    )
    assert job.kind == "promote" and job.version_id == v1
    assert job.actor == "policy:auto_promote:staging->production"
    assert job.created_at - staging.deployed_at >= timedelta(seconds=3)
    assert wait_for_job(job.id, timeout=60).state == "succeeded"
    production = release(str(job.release_id))
    assert production.status == "ACTIVE" and production.version_id == v1
    assert fetch(public_url(api, app, "production")) == "site-v1"
    why = [e for e in release_events(staging.id) if e.actor == job.actor]
    assert len(why) == 1 and why[0].job_id == job.id, [e.reason for e in why]
    assert why[0].data["healthy_seconds"] >= 3
    # Audited as an ordinary promote job, by the policy.
    audit = api.get(
        f"/api/v1/jobs/{job.id}/audit", headers={"Authorization": app["token"]["Authorization"]}
    )
    assert audit.status_code == 200, audit.text
    accepted = [e for e in audit.json() if e["subject_type"] == "job" and not e["from_state"]]
    assert [(e["to_state"], e["actor"]) for e in accepted] == [("queued", job.actor)]

    # Once per (version, environment): later passes (every 0.3 s) leave it alone.
    time.sleep(1.5)
    assert [j.id for j in rollout_jobs(app["id"], "production")] == [job.id]
    assert_consistent(app["id"], "staging")
    assert_consistent(app["id"], "production")


def test_unhealthy_release_recovers_then_is_rolled_back_by_policy(
    api: TestClient, site_images: dict[str, SiteImage]
) -> None:
    app = create_deployment(api, {"Authorization": f"Bearer {api_token()}"}, replicas=1)
    put_policy(api, app, "production", {"health": FAST_HEALTH})
    v1, v2 = (site_version(app["id"], site_images[name]) for name in ("v1", "v2"))
    for version in (v1, v2):
        done = promote(api, app, version)
        assert wait_for_job(done["job"]["id"], timeout=60).state == "succeeded"
    r2 = done["release"]["id"]
    url = public_url(api, app)
    assert fetch(url) == "site-v2"

    # Its health check starts failing (404): UNHEALTHY; it still serves, nothing rolls back.
    in_replica(r2, "rm", "/srv/www/healthz")
    wait_for_status(r2, "UNHEALTHY")
    unhealthy = release(r2)
    assert unhealthy.failure_reason == "unhealthy" and unhealthy.unhealthy_since is not None
    assert unhealthy.failure_diagnostics is not None
    evidence = unhealthy.failure_diagnostics["evidence"]
    assert evidence["path"] == "/healthz"
    assert [p["status_code"] for p in evidence["rounds"][-1]["replicas"]] == [404]
    lifecycle = api.get(
        f"/api/v1/versions/{v2}", headers={"Authorization": app["token"]["Authorization"]}
    ).json()
    assert lifecycle["status"] == "UNHEALTHY" and lifecycle["failure_reason"] == "unhealthy"
    assert fetch(url) == "site-v2"
    assert len(rollout_jobs(app["id"], "production")) == 2

    # Fixed in place: ACTIVE again.
    in_replica(r2, "sh", "-c", "echo ok > /srv/www/healthz")
    wait_for_status(r2, "ACTIVE")
    assert release(r2).failure_reason is None and release(r2).recovered_at is not None

    # With the policy on, the next unhealthy episode rolls back to v1.
    put_policy(api, app, "production", {"health": FAST_HEALTH, "auto_rollback_on_unhealthy": True})
    in_replica(r2, "rm", "/srv/www/healthz")
    jobs = wait_until(
        lambda: [j for j in rollout_jobs(app["id"], "production") if j.kind == "rollback"],
        timeout=30,
        interval=0.1,
        message="no auto rollback",
    )
    [rollback] = jobs
    assert rollback.actor == "policy:auto_rollback_on_unhealthy" and rollback.version_id == v1
    assert wait_for_job(rollback.id, timeout=60).state == "succeeded"
    assert fetch(url) == "site-v1"
    rolled_back = release(r2)
    assert rolled_back.status == "ROLLED_BACK" and rolled_back.rolled_back_at is not None
    assert rolled_back.failure_reason == "unhealthy"
    assert rolled_back.failure_diagnostics is not None
    assert rolled_back.failure_diagnostics["evidence"]["auto_rollback"]["job_id"] == rollback.id
    restored = release(str(rollback.release_id))
    assert restored.status == "ACTIVE" and restored.version_id == v1
    assert restored.rollback_count == 1

    path = [
        (e.from_state, e.to_state, e.actor)
        for e in release_events(r2)
        if e.from_state and e.from_state != e.to_state
    ]
    assert ("ACTIVE", "UNHEALTHY", "health-monitor") in path
    assert ("UNHEALTHY", "ACTIVE", "health-monitor") in path
    assert path[-2:] == [
        ("ACTIVE", "UNHEALTHY", "health-monitor"),
        ("UNHEALTHY", "ROLLED_BACK", "policy:auto_rollback_on_unhealthy"),
    ]
    why = [
        e
        for e in release_events(r2)
        if e.actor == "policy:auto_rollback_on_unhealthy" and e.from_state == e.to_state
    ]
    assert len(why) == 1 and why[0].job_id == rollback.id
    assert why[0].data["evidence"]["rounds"][-1]["replicas"][0]["status_code"] == 404
    assert len(releases(app["id"])) == 3
    assert_consistent(app["id"])
