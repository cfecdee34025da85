"""Concurrent promotes and rollbacks at one environment, through the real API and two workers.

Twelve requests fired at once (promotes of v3/v1 — one superseding the queue —
and default rollbacks) over v2 ACTIVE are
accepted or refused with a reason, run one at a time per environment, and at
every sampled instant — and at the end — the database has at most one ACTIVE
release, HAProxy's ready servers belong to the ACTIVE release (or to the release
a running rollout is switching to), the route never lacks a ready server, and in
the end the engine's containers match the database exactly.
"""

from __future__ import annotations

import secrets
import threading
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from shipway.catalog.models import Release
from shipway.db import session_factory
from shipway.jobs.models import Job
from tests.e2e.conftest import Stack
from tests.e2e.helpers import api_token, wait_for_all, wait_for_job
from tests.e2e.rollout_support import (
    SiteImage,
    assert_consistent,
    fetch,
    release,
    rollout_stack,
    router_servers,
    site_images,
    site_version,
)
from tests.support.processes import wait_until

pytestmark = pytest.mark.e2e
__all__ = ["rollout_stack", "site_images"]  # fixtures, imported for pytest

REQUESTS = 12
REFUSALS = {"version_already_active", "no_rollback_target", "version_not_rollbackable"}


class Sampler(threading.Thread):
    """Samples database and router every 100 ms and records every violation."""

    def __init__(self, deployment_id: str) -> None:
        super().__init__(daemon=True, name="invariant-sampler")
        self.deployment_id = deployment_id
        self.stop = threading.Event()
        self.samples = 0
        self.violations: list[str] = []

    def snapshot(self) -> tuple[set[str], set[str]]:
        """(ACTIVE release ids, releases of running rollout jobs)."""
        with session_factory()() as session:
            active = set(
                session.scalars(
                    select(Release.id).where(
                        Release.deployment_id == self.deployment_id, Release.status == "ACTIVE"
                    )
                )
            )
            switching = set(
                session.scalars(
                    select(Job.release_id).where(
                        Job.deployment_id == self.deployment_id,
                        Job.state == "running",
                        Job.kind.in_(("promote", "rollback")),
                    )
                )
            )
        return active, {r for r in switching if r}

    def run(self) -> None:
        while not self.stop.wait(0.1):
            before, switching_before = self.snapshot()
            servers = router_servers(self.deployment_id)
            after, switching_after = self.snapshot()
            self.samples += 1
            if len(before) > 1 or len(after) > 1:
                self.violations.append(f"two ACTIVE releases: {before} / {after}")
            allowed = before | after | switching_before | switching_after
            ready = {s.name for s in servers if s.state == "ready"}
            owners = {name.removeprefix("sw-").rsplit("-", 1)[0] for name in ready}
            if not owners <= allowed:
                self.violations.append(f"ready servers of {owners - allowed}: {servers}")
            if not ready:
                self.violations.append(f"no ready server: {servers}")


def test_concurrent_promotes_and_rollbacks_keep_one_active_release(
    rollout_stack: Stack, site_images: dict[str, SiteImage]
) -> None:
    stack = rollout_stack
    api = stack.start_api()
    stack.start_relay()
    stack.start_worker("w1")
    stack.start_worker("w2")
    client = api.client(api_token())
    response = client.post(
        "/api/v1/deployments",
        json={
            "name": "busy",
            "kind": "container",
            "replicas": 2,
            "health_check_path": "/healthz",
            "health": {"interval_seconds": 0.2},
        },
    )
    assert response.status_code == 201, response.text
    dep = response.json()["id"]
    versions = [site_version(dep, site_images[name]) for name in ("v1", "v2", "v3")]
    markers = {versions[i]: site_images[n].marker for i, n in enumerate(("v1", "v2", "v3"))}

    for version_id in versions[:2]:  # v2 ACTIVE, v1 archived: rollbacks have a target
        started = _promote(client, dep, version_id)
        assert started.status_code == 202, started.text
        assert wait_for_job(started.json()["job"]["id"], timeout=60).state == "succeeded"
    url = _public_url(client, dep)
    assert fetch(url) == "site-v2"

    sampler = Sampler(dep)
    sampler.start()
    answers: list[httpx.Response | None] = [None] * REQUESTS
    barrier = threading.Barrier(REQUESTS)

    def fire(i: int) -> None:
        with httpx.Client(base_url=api.base_url, headers=client.headers, timeout=30) as mine:
            barrier.wait()
            if i % 3 == 2:
                answers[i] = mine.post(
                    f"/api/v1/deployments/{dep}/rollback",
                    json={"environment": "production"},
                    headers={"Idempotency-Key": secrets.token_hex(8)},
                )
            else:  # v3, v1, -, v3, v1, -, …; the last promote supersedes the queue
                body: dict[str, Any] = {"environment": "production", "supersede": i == 9}
                answers[i] = _promote(mine, dep, (versions[2], versions[0])[i % 3], body)

    threads = [threading.Thread(target=fire, args=(i,)) for i in range(REQUESTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    accepted: list[str] = []
    for answer in answers:
        assert answer is not None
        if answer.status_code == 202:
            accepted.append(answer.json()["job"]["id"])
        else:
            assert answer.status_code == 409, answer.text
            assert answer.json()["error"]["code"] in REFUSALS, answer.text
    assert accepted, [a.text for a in answers if a is not None]

    jobs = wait_for_all(accepted, timeout=300)
    wait_until(lambda: not _running(dep), timeout=60, message="rollouts still running")
    sampler.stop.set()
    sampler.join(10)
    assert sampler.samples > 10
    assert not sampler.violations, sampler.violations[:5]
    ended = {j.state for j in jobs}
    assert ended <= {"succeeded", "failed", "cancelled"}
    assert all(j.failure_reason in (None, "superseded") for j in jobs), [
        (j.id, j.failure_reason, j.failure_diagnostics) for j in jobs if j.failure_reason
    ]
    with session_factory()() as session:
        active = session.scalars(
            select(Release).where(Release.deployment_id == dep, Release.status == "ACTIVE")
        ).all()
    assert len(active) == 1
    assert release(active[0].id).replicas == 2
    assert {fetch(url) for _ in range(6)} == {markers[active[0].version_id]}
    assert_consistent(dep)
    print(
        f"{len(accepted)} of {REQUESTS} accepted; {sampler.samples} samples; "
        f"jobs: {sorted(j.state for j in jobs)}"
    )


def _promote(
    client: httpx.Client, dep: str, version_id: str, body: dict[str, Any] | None = None
) -> httpx.Response:
    return client.post(
        f"/api/v1/deployments/{dep}/versions/{version_id}/promote",
        json=body or {"environment": "production"},
        headers={"Idempotency-Key": secrets.token_hex(8)},
    )


def _public_url(client: httpx.Client, dep: str) -> str:
    body: dict[str, Any] = client.get(f"/api/v1/deployments/{dep}").json()
    env = next(e for e in body["environments"] if e["name"] == "production")
    assert env["public_url"], body
    return str(env["public_url"])


def _running(dep: str) -> bool:
    with session_factory()() as session:
        return (
            session.scalar(
                select(Job.id).where(Job.deployment_id == dep, Job.state.in_(("queued", "running")))
            )
            is not None
        )
