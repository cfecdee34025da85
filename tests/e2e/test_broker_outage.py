"""A broker outage never fails an API request nor loses an accepted job."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from shipway.catalog.models import Release
from shipway.db import session_factory
from tests.e2e.conftest import Stack
from tests.e2e.helpers import (
    api_token,
    get_job,
    job_events,
    seed_ready_version,
    unique,
    wait_for_all,
)

pytestmark = pytest.mark.e2e

PROMOTES = 20
# Two promotes per environment: each environment's second one replaces its first.
ENVIRONMENTS = tuple(f"env-{n}" for n in range(PROMOTES // 2))


def test_promotes_accepted_while_redis_is_down_all_run_once_when_it_returns(
    stack: Stack, static_image: str
) -> None:
    assert stack.redis is not None
    api = stack.start_api()
    stack.wait_ready(
        stack.start_worker("w1", concurrency=3, wait=False),
        stack.start_worker("w2", concurrency=3, wait=False),
        stack.start_relay(wait=False),
    )
    client = api.client(api_token("deployments:write"))
    created = client.post(
        "/api/v1/deployments",
        json={"name": unique("site"), "kind": "static", "environments": list(ENVIRONMENTS)},
    )
    assert created.status_code == 201, created.text
    deployment_id = created.json()["id"]
    versions = [seed_ready_version(deployment_id, image=static_image) for _ in range(PROMOTES)]

    stack.redis.stop()

    job_ids: list[str] = []
    for number, version_id in enumerate(versions):
        environment = ENVIRONMENTS[number % len(ENVIRONMENTS)]
        response = client.post(
            f"/api/v1/deployments/{deployment_id}/versions/{version_id}/promote",
            json={"environment": environment},
            headers={"Idempotency-Key": f"outage-{number}"},
        )
        assert response.status_code == 202, response.text
        job_ids.append(response.json()["job"]["id"])

    # Accepted and durable, but nothing could reach a worker.
    for job_id in job_ids:
        job = get_job(job_id)
        assert (job.state, job.attempts, job.dispatched_at) == ("queued", 0, None)

    not_ready = client.get("/readyz")
    assert not_ready.status_code == 503
    assert not_ready.json()["error"]["details"]["checks"]["database"] == "ok"

    stack.redis.start()

    jobs = wait_for_all(job_ids, timeout=120)
    assert client.get("/readyz").status_code == 200
    for job in jobs:
        assert (job.state, job.attempts) == ("succeeded", 1), job.failure_diagnostics
        claims = [e for e in job_events(job.id) if e.to_state == "running"]
        assert len(claims) == 1, [(e.from_state, e.to_state, e.reason) for e in claims]

    with session_factory()() as session:
        active = session.execute(
            select(Release.environment, Release.version_id).where(
                Release.deployment_id == deployment_id, Release.status == "ACTIVE"
            )
        ).all()
    last_promoted = {ENVIRONMENTS[n % len(ENVIRONMENTS)]: versions[n] for n in range(PROMOTES)}
    assert dict(active) == last_promoted
