"""Redis (the Celery broker) down while publish and promote requests pour in.

A real ``shipway api`` process, two workers and the relay. The test stops Redis,
sends N requests (mostly promotes of seeded ready versions across many
environments, the rest publishes of a small static site) spread evenly over the
outage window from a pool of client threads, then starts Redis again.

Every request must be answered ``202`` or a documented ``503`` (the one error
shape, ``database_unavailable`` / ``service_unavailable``); every accepted job
must be queued and undispatched while Redis is down, and run exactly once after
it returns: one claim, attempt 1, succeeded. Each environment ends up serving
the version promoted last.
"""

from __future__ import annotations

import collections
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from shipway.catalog.models import Release
from shipway.db import session_factory
from tests.chaos.support import (
    FULL,
    LONG_SCENARIO,
    SCALE,
    EngineLeftovers,
    assert_jobs_ran_cleanly,
    describe_jobs,
    static_site,
    unique_marker,
)
from tests.chaos.test_kill_storm import configure
from tests.e2e.conftest import Stack
from tests.e2e.helpers import api_token, get_job, seed_ready_version, wait_for_all

pytestmark = [
    pytest.mark.chaos,
    pytest.mark.e2e,
    pytest.mark.timeout(45 * 60 if FULL else 300),
    LONG_SCENARIO,
]

ENVIRONMENTS = ("production", "staging", "preview")
PROMOTES_PER_ENVIRONMENT = 10
CLIENTS = 32  # concurrent client connections
DOCUMENTED_503 = {"database_unavailable", "service_unavailable"}


@dataclass(frozen=True)
class Request:
    """One request to send: a promote (deployment, environment, version) or a publish."""

    number: int
    kind: str
    deployment_id: str
    environment: str | None = None
    version_id: str | None = None


@dataclass
class Answer:
    request: Request
    status: int
    body: dict[str, Any]
    sent_at: float


def test_requests_during_a_redis_outage_are_accepted_and_run_once_when_it_returns(
    stack: Stack, static_image: str, monkeypatch: pytest.MonkeyPatch, chaos_report: Any
) -> None:
    assert stack.redis is not None
    # No worker is killed here: a long lease keeps a busy machine from requeueing a job.
    configure(
        stack,
        monkeypatch,
        {"SHIPWAY_LEASE_SECONDS": "20", "SHIPWAY_MONITOR_INTERVAL_SECONDS": "0"},
    )
    api = stack.start_api()
    stack.wait_ready(
        stack.start_worker("w1", concurrency=3, wait=False),
        stack.start_worker("w2", concurrency=3, wait=False),
        stack.start_relay(wait=False),
    )
    leftovers = EngineLeftovers()
    client = api.client(api_token("deployments:write"))
    try:
        _outage(stack, api.client, client, leftovers, static_image, chaos_report)
    finally:
        for worker in stack.workers:
            worker.kill()
        leftovers.remove()


def _outage(
    stack: Stack,
    new_client: Any,
    client: httpx.Client,
    leftovers: EngineLeftovers,
    static_image: str,
    chaos_report: Any,
) -> None:
    assert stack.redis is not None
    publishes = round(SCALE.requests * SCALE.publish_share)
    promotes = SCALE.requests - publishes
    per_deployment = PROMOTES_PER_ENVIRONMENT * len(ENVIRONMENTS)
    deployment_ids = []
    for _ in range(-(-promotes // per_deployment)):
        created = client.post(
            "/api/v1/deployments",
            json={
                "name": unique_marker("outage"),
                "kind": "static",
                "environments": list(ENVIRONMENTS),
            },
        )
        assert created.status_code == 201, created.text
        deployment_ids.append(created.json()["id"])
    pub = client.post("/api/v1/deployments", json={"name": unique_marker("pub"), "kind": "static"})
    assert pub.status_code == 201, pub.text
    leftovers.deployment_ids += [*deployment_ids, pub.json()["id"]]

    requests: list[Request] = []
    for number in range(promotes):
        deployment_id = deployment_ids[number // per_deployment]
        environment = ENVIRONMENTS[number % len(ENVIRONMENTS)]
        version_id = seed_ready_version(deployment_id, image=static_image)
        requests.append(Request(number, "promote", deployment_id, environment, version_id))
    # Publishes spread among the promotes.
    step = max(1, SCALE.requests // max(1, publishes))
    for n in range(publishes):
        requests.insert(min(len(requests), n * step), Request(-1, "publish", pub.json()["id"]))
    requests = [
        Request(i, r.kind, r.deployment_id, r.environment, r.version_id)
        for i, r in enumerate(requests)
    ]

    stack.redis.stop()
    down_at = time.monotonic()
    answers = _send_spread(new_client, client.headers["Authorization"], requests, down_at)
    # Every request was answered before Redis came back (it is started only below).
    sent_by = max(a.sent_at for a in answers)
    answered_by = time.monotonic() - down_at

    not_ready = client.get("/readyz")
    assert not_ready.status_code == 503
    assert not_ready.json()["error"]["details"]["checks"]["database"] == "ok"
    statuses = collections.Counter(a.status for a in answers)
    for answer in answers:
        assert answer.status in (202, 503), (answer.status, answer.body)
        if answer.status == 503:
            error = answer.body["error"]
            assert error["code"] in DOCUMENTED_503 and error["message"], answer.body
    accepted = [a for a in answers if a.status == 202]
    job_ids = [a.body["job"]["id"] for a in accepted]
    assert len(set(job_ids)) == len(job_ids)
    for job_id in job_ids:  # durable, but nothing could reach a worker
        job = get_job(job_id)
        assert (job.state, job.attempts, job.dispatched_at) == ("queued", 0, None), job_id
    time.sleep(max(0.0, SCALE.outage_seconds - (time.monotonic() - down_at)))
    outage = time.monotonic() - down_at

    stack.redis.start()
    back_at = time.monotonic()
    jobs = wait_for_all(job_ids, timeout=40 * 60 if FULL else 240)
    drained_in = time.monotonic() - back_at
    assert client.get("/readyz").status_code == 200
    assert_jobs_ran_cleanly(jobs)
    for job in jobs:
        assert (job.state, job.attempts) == ("succeeded", 1), (
            job.id,
            job.kind,
            job.state,
            job.failure_reason,
            job.failure_diagnostics,
        )
    # The promote accepted last (in the job queue's order) is what serves in each environment.
    last: dict[tuple[str, str], str] = {}
    for job in sorted(jobs, key=lambda j: (j.created_at, j.id)):
        if job.kind == "promote":
            assert job.deployment_id and job.environment and job.version_id
            last[(job.deployment_id, job.environment)] = job.version_id
    with session_factory()() as session:
        active = session.execute(
            select(Release.deployment_id, Release.environment, Release.version_id).where(
                Release.status == "ACTIVE"
            )
        ).all()
    assert {(r.deployment_id, r.environment): r.version_id for r in active} == last

    kinds = collections.Counter(a.request.kind for a in answers)
    chaos_report(
        f"chaos redis outage: {len(answers)} requests ({kinds['promote']} promote, "
        f"{kinds['publish']} publish) sent within {sent_by:.1f}s, answered within "
        f"{answered_by:.1f}s of a {outage:.0f}s outage: "
        + ", ".join(f"{n}x{s}" for s, n in sorted(statuses.items()))
        + f"; jobs {describe_jobs(jobs)}, each claimed once, all done {drained_in:.0f}s "
        "after Redis returned"
    )


def _send_spread(
    new_client: Any, authorization: str, requests: list[Request], down_at: float
) -> list[Answer]:
    """Send each request at its moment of the outage window, from a pool of threads."""
    gap = SCALE.outage_seconds * 0.8 / max(1, len(requests))
    local = threading.local()

    def send(request: Request) -> Answer:
        wait = down_at + request.number * gap - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        if not hasattr(local, "client"):
            local.client = new_client()
        http: httpx.Client = local.client
        headers = {"Authorization": authorization, "Idempotency-Key": secrets.token_hex(8)}
        sent_at = time.monotonic() - down_at
        if request.kind == "promote":
            response = http.post(
                f"/api/v1/deployments/{request.deployment_id}/versions/"
                f"{request.version_id}/promote",
                json={"environment": request.environment},
                headers=headers,
            )
        else:
            response = http.post(
                f"/api/v1/deployments/{request.deployment_id}/versions",
                files={
                    "source": (
                        "site.tar.gz",
                        static_site(unique_marker("outage")),
                        "application/gzip",
                    )
                },
                headers=headers,
            )
        return Answer(request, response.status_code, response.json(), sent_at)

    with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        return list(pool.map(send, requests))
