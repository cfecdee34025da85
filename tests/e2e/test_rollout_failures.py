"""Rollouts that fail before the switch: classified, diagnosed, and harmless to what serves.

Each test first makes v1 ACTIVE with two replicas, then promotes a broken v2.
Whatever the failure, v1 keeps serving untouched (same containers, same router
servers, public URL answers v1), v2's replicas are removed, and v2's release is
FAILED with a stable ``failure_reason`` and diagnostics written for a person.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient

from shipway.catalog.models import Deployment
from shipway.db import transaction
from tests.conftest import TokenFactory
from tests.e2e.rollout_support import (
    SiteImage,
    assert_consistent,
    build_site_image,
    containers,
    create_deployment,
    fetch,
    job,
    phases,
    promote,
    public_url,
    release,
    remove_image,
    run,
    set_health,
    site_images,
    site_version,
)

pytestmark = pytest.mark.e2e
__all__ = ["site_images"]  # the fixture, imported for pytest

Images = dict[str, SiteImage]
DEADLINE = 60.0  # health-check deadline of the fast-failing cases: they must end well before


@dataclass
class Serving:
    """v1, ACTIVE, as it was before the broken rollout."""

    app: dict[str, Any]
    release_id: str
    url: str
    containers: list[tuple[str, str]]


@pytest.fixture
def serving(client: TestClient, make_token: TokenFactory, site_images: Images) -> Serving:
    app = create_deployment(
        client, make_token("deployments:write"), replicas=2, health={"deadline_seconds": DEADLINE}
    )
    v1 = site_version(app["id"], site_images["v1"])
    body = promote(client, app, v1)
    assert run(body["job"]["id"]) == "succeeded"
    url = public_url(client, app)
    assert fetch(url) == "site-v1"
    snapshot = [(c.id, c.name) for c in containers(body["release"]["id"])]
    assert len(snapshot) == 2
    return Serving(app=app, release_id=body["release"]["id"], url=url, containers=snapshot)


def fail_rollout(
    client: TestClient, serving: Serving, version_id: str, reason: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Promote ``version_id``, expect ``reason``; returns (diagnostics, job timings)."""
    body = promote(client, serving.app, version_id)
    job_id, release_id = body["job"]["id"], body["release"]["id"]
    assert run(job_id) == "failed"
    ended = job(job_id)
    assert ended.failure_reason == reason, ended.failure_diagnostics
    failed = release(release_id)
    assert failed.status == "FAILED"
    assert failed.failure_reason == reason
    assert failed.replicas == 0 and failed.deployed_at is None
    diagnostics = failed.failure_diagnostics
    assert diagnostics is not None and diagnostics == ended.failure_diagnostics
    assert {"title", "description", "action", "evidence"} <= set(diagnostics)
    assert all(isinstance(diagnostics[k], str) and diagnostics[k] for k in ("title", "action"))
    assert containers(release_id) == []  # the new replicas are gone
    assert_untouched(serving)
    lifecycle = client.get(
        f"/api/v1/versions/{version_id}",
        headers={"Authorization": serving.app["token"]["Authorization"]},
    ).json()
    assert lifecycle["status"] == "FAILED" and lifecycle["failure_reason"] == reason
    assert lifecycle["failure_diagnostics"] == diagnostics
    assert ended.started_at is not None and ended.finished_at is not None
    timings = {
        "seconds": (ended.finished_at - ended.started_at).total_seconds(),
        "phases": [name for name, _ in phases(job_id)],
    }
    return diagnostics, timings


def assert_untouched(serving: Serving) -> None:
    """v1 still ACTIVE with the very same running containers, and still answering."""
    row = release(serving.release_id)
    assert row.status == "ACTIVE" and row.replicas == 2 and row.failure_reason is None
    now = containers(serving.release_id)
    assert [(c.id, c.name) for c in now] == serving.containers
    assert all(c.running for c in now)
    assert {fetch(serving.url) for _ in range(4)} == {"site-v1"}
    assert_consistent(serving.app["id"])


def test_crash_loop_fails_fast_with_exit_code_and_logs(
    client: TestClient, serving: Serving, site_images: Images
) -> None:
    broken = site_version(
        serving.app["id"],
        site_images["v2"],
        command="sh -c 'echo fatal: DATABASE_URL is not set; exit 3'",
    )
    diagnostics, timings = fail_rollout(client, serving, broken, "crash_loop")
    evidence = diagnostics["evidence"]
    assert evidence["exit_code"] == 3
    assert "fatal: DATABASE_URL is not set" in evidence["last_log_lines"]
    assert evidence["status"] == "exited" and evidence["oom_killed"] is False
    assert "exit code 3" in diagnostics["description"]
    # Fast: the job ended long before the health-check deadline it would otherwise wait.
    assert timings["seconds"] < DEADLINE
    assert timings["phases"] == ["scale", "health_check"]


def test_health_check_failed_reports_status_codes_and_body(
    client: TestClient, serving: Serving, site_images: Images
) -> None:
    broken = site_version(serving.app["id"], site_images["v2"], health_check_path="/cgi-bin/fail")
    diagnostics, timings = fail_rollout(client, serving, broken, "health_check_failed")
    evidence = diagnostics["evidence"]
    assert evidence["path"] == "/cgi-bin/fail"
    assert evidence["unhealthy_threshold"] == 3
    answered = [p for p in evidence["probes"] if p["status_code"] is not None]
    assert len(answered) >= 3
    assert {p["status_code"] for p in answered} == {500}
    assert all("database unreachable" in p["body_excerpt"] for p in answered)
    assert "HTTP 500" in diagnostics["description"]
    assert "/cgi-bin/fail" in diagnostics["action"]
    assert timings["seconds"] < DEADLINE


def test_health_check_timeout_when_nothing_listens(
    client: TestClient, serving: Serving, site_images: Images
) -> None:
    set_health(serving.app["id"], {"deadline_seconds": 3, "interval_seconds": 0.5})
    silent = site_version(serving.app["id"], site_images["v2"], command="sleep 3600")
    diagnostics, timings = fail_rollout(client, serving, silent, "health_check_timeout")
    evidence = diagnostics["evidence"]
    assert evidence["deadline_seconds"] == 3 and evidence["path"] == "/healthz"
    assert len(evidence["replicas"]) == 2  # both replicas are named, with their probes
    for probes in evidence["replicas"].values():
        assert probes and all(p["status_code"] is None and p["error"] for p in probes)
    assert "within 3 seconds" in diagnostics["description"]
    assert "deadline_seconds" in diagnostics["action"]
    assert timings["seconds"] >= 3  # it did wait for its deadline


def test_scheduling_failed_when_the_memory_limit_is_impossible(
    client: TestClient, serving: Serving, site_images: Images
) -> None:
    with transaction() as session:
        row = session.get(Deployment, serving.app["id"])
        assert row is not None
        row.resources = {"memory_mb": 1}
    v2 = site_version(serving.app["id"], site_images["v2"])
    diagnostics, timings = fail_rollout(client, serving, v2, "scheduling_failed")
    evidence = diagnostics["evidence"]
    assert evidence["memory_mb"] == 1
    assert evidence["image"] == site_images["v2"].tag
    assert "memory" in evidence["error"].lower()
    assert "resources" in diagnostics["action"]
    assert timings["phases"] == ["scale"]
    assert timings["seconds"] < DEADLINE


def test_image_pull_failed_when_the_image_is_gone(
    client: TestClient, serving: Serving, site_images: Images
) -> None:
    doomed = build_site_image("site-doomed")
    gone = site_version(serving.app["id"], doomed)
    remove_image(doomed.tag)  # e.g. pruned after its rollback window
    diagnostics, timings = fail_rollout(client, serving, gone, "image_pull_failed")
    assert diagnostics["evidence"]["image"] == doomed.tag
    assert "publish" in diagnostics["action"].lower()  # the way out: publish again
    assert timings["phases"] == ["scale"]
    assert timings["seconds"] < DEADLINE
