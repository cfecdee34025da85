"""Promote, replace, roll back (warm and cold) and cancel on the real engine and HAProxy.

The API runs in-process (TestClient) and rollout jobs run in-process with
``run_job``; replicas are real containers of test images whose ``/`` names the
version that answered, and the public URL is the environment's HAProxy frontend.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from fastapi.testclient import TestClient

from shipway.config import get_settings
from tests.conftest import TokenFactory
from tests.e2e.rollout_support import (
    SiteImage,
    assert_consistent,
    containers,
    create_deployment,
    fetch,
    job,
    phases,
    promote,
    public_url,
    release,
    releases,
    rollback,
    run,
    site_images,
    site_version,
)
from tests.support.processes import wait_until
from tests.test_api_auth import assert_error

pytestmark = pytest.mark.e2e
__all__ = ["site_images"]  # the fixture, imported for pytest

Images = dict[str, SiteImage]


@pytest.fixture
def app(client: TestClient, make_token: TokenFactory) -> dict[str, Any]:
    """A 2-replica container deployment with a write token."""
    return create_deployment(client, make_token("deployments:write"), replicas=2)


def versions(app: dict[str, Any], images: Images, *names: str) -> list[str]:
    return [site_version(app["id"], images[name]) for name in names]


def test_promote_then_replace_with_two_replicas(
    client: TestClient, app: dict[str, Any], site_images: Images
) -> None:
    v1, v2 = versions(app, site_images, "v1", "v2")
    first = promote(client, app, v1)
    assert run(first["job"]["id"]) == "succeeded"

    r1 = release(first["release"]["id"])
    assert r1.status == "ACTIVE" and r1.replicas == 2
    assert r1.deployed_at is not None and r1.image_expires_at is None
    lifecycle = client.get(f"/api/v1/versions/{v1}", headers=_auth(app)).json()
    assert lifecycle["status"] == "ACTIVE" and lifecycle["replicas"] == 2
    assert lifecycle["deployed_at"]
    full = client.get(f"/api/v1/deployments/{app['id']}/versions/{v1}", headers=_auth(app))
    assert full.json()["promoted_at"] and full.json()["state"] == "ready"
    v1_containers = containers(r1.id)
    assert [c.name for c in v1_containers] == [f"sw-{r1.id}-0", f"sw-{r1.id}-1"]
    assert all(c.running for c in v1_containers)
    url = public_url(client, app)
    assert url.startswith("http://127.0.0.1:")
    assert {fetch(url) for _ in range(6)} == {"site-v1"}
    assert_consistent(app["id"])

    second = promote(client, app, v2)
    assert run(second["job"]["id"]) == "succeeded"
    assert public_url(client, app) == url  # one address per environment, kept across rollouts
    assert {fetch(url) for _ in range(6)} == {"site-v2"}
    r1, r2 = release(r1.id), release(second["release"]["id"])
    assert r2.status == "ACTIVE" and r2.replicas == 2 and r2.deployed_at
    assert r1.status == "RETIRED" and r1.retired_at is not None and r1.replicas == 0
    assert r1.image_expires_at is not None and r1.image_expires_at > r1.retired_at
    assert containers(r1.id) == []
    old = client.get(f"/api/v1/deployments/{app['id']}/versions/{v1}", headers=_auth(app)).json()
    assert old["state"] == "archived"
    assert old["status"] == "RETIRED" and old["image_expires_at"]
    assert_consistent(app["id"])

    names = [name for name, _ in phases(second["job"]["id"])]
    assert names == ["scale", "health_check", "switch", "drain", "retire"]
    assert [name for name, _ in phases(first["job"]["id"])] == ["scale", "health_check", "switch"]
    done = job(second["job"]["id"])
    assert done.result is not None
    assert done.result["replaced_release_id"] == r1.id
    assert done.result["drain"]["drained"] is True


def test_warm_rollback_is_a_router_switch_to_the_same_containers(
    client: TestClient,
    app: dict[str, Any],
    site_images: Images,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SHIPWAY_SCALE_DOWN_DELAY_SECONDS", "300")
    get_settings.cache_clear()
    v1, v2 = versions(app, site_images, "v1", "v2")
    r1_id = _promoted(client, app, v1)
    warm = [(c.id, c.name) for c in containers(r1_id)]
    r2_id = _promoted(client, app, v2)
    url = public_url(client, app)
    assert {fetch(url) for _ in range(4)} == {"site-v2"}
    assert release(r1_id).status == "DRAINING"
    assert [(c.id, c.name) for c in containers(r1_id)] == warm  # still warm
    assert_consistent(app["id"])

    response = rollback(client, app)
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["release"]["id"] == r1_id  # the warm release itself, no new one
    assert body["job"]["kind"] == "rollback"
    assert run(body["job"]["id"]) == "succeeded"

    assert {fetch(url) for _ in range(6)} == {"site-v1"}
    back, left = release(r1_id), release(r2_id)
    assert back.status == "ACTIVE" and back.rollback_count == 1
    assert back.last_rollback_at is not None and back.image_expires_at is None
    assert left.status == "ROLLED_BACK" and left.rolled_back_at is not None
    assert left.image_expires_at is not None
    assert [(c.id, c.name) for c in containers(r1_id)] == warm  # no container was created
    assert len(releases(app["id"])) == 2
    assert [name for name, _ in phases(body["job"]["id"])] == ["switch", "drain"]
    assert_consistent(app["id"])
    lifecycle = client.get(f"/api/v1/versions/{v1}", headers=_auth(app)).json()
    assert lifecycle["status"] == "ACTIVE" and lifecycle["rollback_count"] == 1
    assert lifecycle["last_rollback_at"]


def test_cold_rollback_runs_the_exact_retained_image(
    client: TestClient, app: dict[str, Any], site_images: Images
) -> None:
    v1, v2 = versions(app, site_images, "v1", "v2")
    r1_id = _promoted(client, app, v1)
    _promoted(client, app, v2)
    assert release(r1_id).status == "RETIRED" and containers(r1_id) == []  # delay 0: gone

    response = rollback(client, app)
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["job"]["kind"] == "rollback" and body["release"]["version_id"] == v1
    assert body["release"]["id"] != r1_id  # fresh replicas need a fresh release
    assert run(body["job"]["id"]) == "succeeded"

    back = release(body["release"]["id"])
    assert back.status == "ACTIVE" and back.replicas == 2
    assert back.rollback_count == 1 and back.last_rollback_at is not None
    fresh = containers(back.id)
    assert len(fresh) == 2
    from shipway.runtime.docker_runtime import DockerRuntime

    engine = DockerRuntime().client
    for container in fresh:  # the retained image, by id: never a rebuild
        assert engine.api.inspect_container(container.id)["Image"] == site_images["v1"].id
    assert site_images["v1"].id == _artifact(v1)
    rolled = [r for r in releases(app["id"]) if r.version_id != v1]
    assert [r.status for r in rolled] == ["ROLLED_BACK"]
    assert rolled[0].rolled_back_at is not None and containers(rolled[0].id) == []
    assert {fetch(public_url(client, app)) for _ in range(4)} == {"site-v1"}
    assert [name for name, _ in phases(body["job"]["id"])] == [
        "scale",
        "health_check",
        "switch",
        "drain",
        "retire",
    ]
    assert_consistent(app["id"])


def test_rollback_to_an_explicit_version(
    client: TestClient, app: dict[str, Any], site_images: Images
) -> None:
    v1, v2, v3 = versions(app, site_images, "v1", "v2", "v3")
    for version_id in (v1, v2, v3):
        _promoted(client, app, version_id)
    # The default target would be v2 (latest retained); ask for v1 explicitly.
    response = rollback(client, app, to_version_id=v1)
    assert response.status_code == 202, response.text
    assert response.json()["release"]["version_id"] == v1
    assert run(response.json()["job"]["id"]) == "succeeded"
    assert fetch(public_url(client, app)) == "site-v1"
    statuses = {(r.version_id, r.status) for r in releases(app["id"])}
    assert statuses == {
        (v1, "RETIRED"),
        (v2, "RETIRED"),
        (v3, "ROLLED_BACK"),
        (v1, "ACTIVE"),
    }
    assert_consistent(app["id"])


def test_rollback_without_target_is_409(
    client: TestClient, app: dict[str, Any], site_images: Images
) -> None:
    assert_error(rollback(client, app), 409, "no_rollback_target")
    (v1,) = versions(app, site_images, "v1")
    _promoted(client, app, v1)
    error = assert_error(rollback(client, app), 409, "no_rollback_target")
    assert error["details"]["environment"] == "production"
    assert fetch(public_url(client, app)) == "site-v1"


def test_cancel_during_health_check_removes_the_new_replicas(
    client: TestClient, app: dict[str, Any], site_images: Images
) -> None:
    (v1,) = versions(app, site_images, "v1")
    r1_id = _promoted(client, app, v1)
    before = [(c.id, c.status) for c in containers(r1_id)]
    slow = site_version(
        app["id"], site_images["v2"], command="sh -c 'sleep 300; exec httpd -f -p 8080 -h /srv/www'"
    )
    started = promote(client, app, slow)
    job_id, new_id = started["job"]["id"], started["release"]["id"]
    outcome: list[str | None] = []
    runner = threading.Thread(target=lambda: outcome.append(run(job_id)))
    runner.start()
    try:
        wait_until(lambda: job(job_id).phase == "health_check", timeout=60, interval=0.05)
        assert len(containers(new_id)) == 2
        response = client.post(f"/api/v1/jobs/{job_id}/cancel", headers=_auth(app))
        assert response.status_code == 200, response.text
        assert response.json()["cancel_requested"] is True
    finally:
        runner.join(60)
    assert outcome == ["cancelled"]
    ended = job(job_id)
    assert ended.state == "cancelled" and ended.failure_reason == "cancelled"
    failed = release(new_id)
    assert failed.status == "FAILED" and failed.failure_reason == "cancelled"
    assert failed.failure_diagnostics is not None
    assert {"title", "description", "action", "evidence"} <= set(failed.failure_diagnostics)
    assert failed.replicas == 0
    assert containers(new_id) == []
    assert [(c.id, c.status) for c in containers(r1_id)] == before
    assert release(r1_id).status == "ACTIVE"
    assert {fetch(public_url(client, app)) for _ in range(4)} == {"site-v1"}
    assert_consistent(app["id"])


# --------------------------------------------------------------------------- helpers


def _auth(app: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": app["token"]["Authorization"]}


def _promoted(client: TestClient, app: dict[str, Any], version_id: str) -> str:
    """Promote and run to the end; returns the new ACTIVE release id."""
    body = promote(client, app, version_id)
    assert run(body["job"]["id"]) == "succeeded", job(body["job"]["id"]).failure_diagnostics
    row = release(body["release"]["id"])
    assert row.status == "ACTIVE", row.status
    return row.id


def _artifact(version_id: str) -> str | None:
    from shipway.catalog.models import Version
    from shipway.db import session_factory

    with session_factory()() as session:
        version = session.get(Version, version_id)
        assert version is not None
        return version.artifact_sha256


def test_a_version_queued_twice_is_redeployed_not_archived(
    client: TestClient, app: dict[str, Any], site_images: Images
) -> None:
    (v1,) = versions(app, site_images, "v1")
    first, again = promote(client, app, v1), promote(client, app, v1)  # both queued
    assert run(first["job"]["id"]) == "succeeded"
    assert run(again["job"]["id"]) == "succeeded"
    assert release(again["release"]["id"]).status == "ACTIVE"
    assert release(first["release"]["id"]).status == "RETIRED"
    full = client.get(f"/api/v1/deployments/{app['id']}/versions/{v1}", headers=_auth(app))
    assert full.json()["state"] == "ready"  # never promoted out of production
    assert fetch(public_url(client, app)) == "site-v1"
    assert_consistent(app["id"])
