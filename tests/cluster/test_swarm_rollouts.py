"""Publish and promote through the API with SHIPWAY_RUNTIME=swarm and a registry: the build
is pushed and recorded by digest, three replicas run on the three nodes, HAProxy (in the
root namespace) routes to their node endpoints, and a second version and a rollback switch
traffic. Jobs run in this process (no broker), as the rollout end-to-end tests do."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from shipway.catalog.models import Release, Version
from shipway.config import get_settings
from shipway.db import transaction
from shipway.deployments.addresses import route_key
from shipway.jobs.models import Job
from shipway.jobs.runner import run_job
from shipway.releases.reconcile import watch_router
from shipway.releases.replicas import RELEASE_LABEL
from shipway.releases.retention import collect_once
from shipway.router.current import router_config
from shipway.runtime import _runtime, get_runtime
from tests.cluster.scale import full_only
from tests.conftest import _migrate, auth
from tests.support.cluster import Cluster
from tests.support.services import free_port
from tests.test_archive import site_archive

pytestmark = pytest.mark.cluster


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """SQLite only: the database is not what this suite is about."""
    url = f"sqlite:///{tmp_path / 'shipway.db'}"
    _migrate(url, tmp_path)
    return url


@pytest.fixture
def on_swarm(
    cluster: Cluster, base_image_ref: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Cluster]:
    """shipway pointed at the swarm's manager and the registry (set before the app starts)."""
    del base_image_ref  # loaded on node 1: the static build's FROM image
    monkeypatch.setenv("SHIPWAY_RUNTIME", "swarm")
    monkeypatch.setenv("DOCKER_HOST", cluster.manager_docker_host())
    monkeypatch.setenv("SHIPWAY_REGISTRY", cluster.registry_address)
    get_settings.cache_clear()
    _runtime.cache_clear()
    yield cluster
    _runtime.cache_clear()


@pytest.fixture
def swarm_client(on_swarm: Cluster, client: TestClient) -> TestClient:
    return client


def publish(client: TestClient, deployment: dict[str, Any], text: str, key: str) -> str:
    files = {"index.html": f"{text}\n".encode(), "healthz": b"ok\n"}
    answer = client.post(
        f"/api/v1/deployments/{deployment['id']}/versions",
        files={"source": ("site.tar.gz", site_archive("tar.gz", files), "application/gzip")},
        headers=auth(deployment["token"], **{"Idempotency-Key": key}),
    )
    assert answer.status_code == 202, answer.text
    assert run_job(answer.json()["job"]["id"]) == "succeeded"
    return str(answer.json()["version"]["id"])


def promote(client: TestClient, deployment: dict[str, Any], version_id: str, key: str) -> str:
    answer = client.post(
        f"/api/v1/deployments/{deployment['id']}/versions/{version_id}/promote",
        json={"environment": "production"},
        headers=auth(deployment["token"], **{"Idempotency-Key": key}),
    )
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["job"]["id"]
    assert run_job(job_id) == "succeeded", _failure(job_id)
    return str(answer.json()["release"]["id"])


def _failure(job_id: str) -> Any:
    with transaction() as session:
        job = session.get(Job, job_id)
        return job and (job.failure_reason, job.failure_diagnostics)


def answered(url: str, expected: str, timeout: float = 30) -> int:
    """Wait until ``url`` answers ``expected`` (20 answers in a row); how many it took."""
    deadline, streak, tries = time.monotonic() + timeout, 0, 0
    while streak < 20:
        assert time.monotonic() < deadline, f"{url} never answered {expected!r} 20 times"
        tries += 1
        try:
            body = httpx.get(url, timeout=2).text.strip()
        except httpx.HTTPError:
            body = ""
        streak = streak + 1 if body == expected else 0
    return tries


def test_publish_pushes_by_digest_and_promote_spreads_over_the_nodes(
    swarm_client: TestClient, deployment: dict[str, Any], on_swarm: Cluster
) -> None:
    client = swarm_client
    patched = client.patch(
        f"/api/v1/deployments/{deployment['id']}",
        json={"replicas": 3},
        headers=auth(deployment["token"]),
    )
    assert patched.status_code == 200, patched.text
    v1 = publish(client, deployment, "version one", "p1")
    with transaction() as session:
        version = session.get(Version, v1)
        assert version is not None and version.runtime_image is not None
        image = version.runtime_image
    repository, _, digest = image.partition("@")
    assert repository == f"{on_swarm.registry_address}/shipway/{deployment['id']}"
    assert digest.startswith("sha256:")
    assert on_swarm.registry_digest(repository.split("/", 1)[1], "v1") == digest

    r1 = promote(client, deployment, v1, "m1")
    replicas = get_runtime().replicas({RELEASE_LABEL: r1})
    assert len(replicas) == 3 and all(r.running for r in replicas)
    nodes = {r.endpoint.address for r in replicas if r.endpoint}
    assert nodes == {on_swarm.node_address(i) for i in (1, 2, 3)}
    url = client.get(
        f"/api/v1/deployments/{deployment['id']}", headers=auth(deployment["token"])
    ).json()["environments"][0]["public_url"]
    answered(url, "version one")

    v2 = publish(client, deployment, "version two", "p2")
    r2 = promote(client, deployment, v2, "m2")
    answered(url, "version two")
    with transaction() as session:
        assert session.get(Release, r1).status in ("DRAINING", "RETIRED")  # type: ignore[union-attr]
    rolled = client.post(
        f"/api/v1/deployments/{deployment['id']}/rollback",
        json={"environment": "production"},
        headers=auth(deployment["token"], **{"Idempotency-Key": "rb"}),
    )
    assert rolled.status_code == 202, rolled.text
    assert run_job(rolled.json()["job"]["id"]) == "succeeded", _failure(rolled.json()["job"]["id"])
    answered(url, "version one")
    with transaction() as session:
        assert session.get(Release, r2).status in ("ROLLED_BACK", "DRAINING", "RETIRED")  # type: ignore[union-attr]


def test_registry_down_fails_the_version_with_a_diagnosis(
    swarm_client: TestClient, deployment: dict[str, Any], on_swarm: Cluster
) -> None:
    host = on_swarm.registry_address.rsplit(":", 1)[0]
    down = f"{host}:{free_port()}"  # nothing listens there
    os.environ["SHIPWAY_REGISTRY"] = down  # restored by on_swarm's monkeypatch
    get_settings.cache_clear()
    answer = swarm_client.post(
        f"/api/v1/deployments/{deployment['id']}/versions",
        files={"source": ("s.tar.gz", site_archive("tar.gz"), "application/gzip")},
        headers=auth(deployment["token"], **{"Idempotency-Key": "down"}),
    )
    assert answer.status_code == 202, answer.text
    assert run_job(answer.json()["job"]["id"]) == "failed"
    with transaction() as session:
        version = session.get(Version, answer.json()["version"]["id"])
        assert version is not None
        assert version.state == "failed" and version.failure_reason == "image_push_failed"
        diagnostics = version.failure_diagnostics or {}
        assert {"title", "description", "action"} <= set(diagnostics)
        assert down in diagnostics["description"]
        assert len(diagnostics["evidence"]["attempts"]) == 4  # retried before giving up
        assert version.runtime_image is None  # never a version no node can pull


@full_only
def test_a_lost_node_s_replica_is_rescheduled_and_routed_again(
    swarm_client: TestClient,
    deployment: dict[str, Any],
    on_swarm: Cluster,
    cluster_report: Callable[[str], None],
) -> None:
    """Node 2 dies under an ACTIVE release: Swarm starts its replica on another node, the
    router watch (the relay's periodic task) points HAProxy at it, and every request through
    the public address succeeds afterwards; the database, Swarm and HAProxy agree."""
    client = swarm_client
    client.patch(
        f"/api/v1/deployments/{deployment['id']}",
        json={"replicas": 3},
        headers=auth(deployment["token"]),
    )
    release_id = promote(client, deployment, publish(client, deployment, "steady", "p"), "m")
    url = client.get(
        f"/api/v1/deployments/{deployment['id']}", headers=auth(deployment["token"])
    ).json()["environments"][0]["public_url"]
    answered(url, "steady")
    lost = on_swarm.node_address(2)
    key = route_key(deployment["id"], "production")
    t0 = time.monotonic()
    on_swarm.kill_node(2)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert time.monotonic() < deadline, "the lost replica was never routed again"
            watch_router()  # what the relay runs every second
            replicas = get_runtime().replicas({RELEASE_LABEL: release_id})
            endpoints = {(r.endpoint.address, r.endpoint.port) for r in replicas if r.endpoint}
            routed = {(s.address, s.port) for s in router_config().servers(key)}
            if (
                len(replicas) == 3
                and all(r.running for r in replicas)
                and lost not in {address for address, _ in endpoints}
                and routed == endpoints
            ):
                break
            time.sleep(0.5)
        recovered = time.monotonic() - t0
        failed = [body for body in (_body(url) for _ in range(200)) if body != "steady"]
        cluster_report(
            f"node 2 killed: its replica rescheduled and routed again after {recovered:.1f}s; "
            f"then {len(failed)} failed of 200 requests"
        )
        assert failed == []
        with transaction() as session:
            assert session.get(Release, release_id).status == "ACTIVE"  # type: ignore[union-attr]
    finally:
        on_swarm.restart_node(2)


def _body(url: str) -> str:
    try:
        return httpx.get(url, timeout=5).text.strip()
    except httpx.HTTPError as error:
        return type(error).__name__


def test_image_gc_deletes_expired_images_from_the_registry_never_a_pinned_one(
    swarm_client: TestClient,
    deployment: dict[str, Any],
    on_swarm: Cluster,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Three versions; the first two leave the rollback window at once (retention 0 h, no
    newest-N kept). The pinned one stays in the registry; the other is deleted there, the
    registry's garbage collection runs, and the serving version is untouched."""
    monkeypatch.setenv("SHIPWAY_IMAGE_RETENTION_HOURS", "0")
    monkeypatch.setenv("SHIPWAY_KEEP_LAST_VERSIONS", "0")
    monkeypatch.setenv("SHIPWAY_REGISTRY_API_URL", on_swarm.registry_url)
    monkeypatch.setenv(
        "SHIPWAY_REGISTRY_GC_COMMAND",
        f"docker-registry garbage-collect --delete-untagged {on_swarm.registry_config}",
    )
    get_settings.cache_clear()
    client = swarm_client
    versions = [publish(client, deployment, f"v{n}", f"gc{n}") for n in (1, 2, 3)]
    for n, version_id in enumerate(versions, start=1):
        promote(client, deployment, version_id, f"gcm{n}")
    pinned = client.post(
        f"/api/v1/deployments/{deployment['id']}/versions/{versions[1]}/pin",
        headers=auth(deployment["token"]),
    )
    assert pinned.status_code == 200, pinned.text
    images = {}
    with transaction() as session:
        for version_id in versions:
            version = session.get(Version, version_id)
            assert version is not None and version.runtime_image
            images[version_id] = version.runtime_image
    repository = images[versions[0]].partition("@")[0].split("/", 1)[1]

    report = collect_once()

    assert report.deleted_from_registry == [images[versions[0]]]
    assert report.registry_gc is True
    assert versions[1] in report.kept and report.kept[versions[1]] == "pinned"
    with pytest.raises(Exception, match="404"):
        on_swarm.registry_digest(repository, "v1")
    for tag in ("v2", "v3"):  # pinned, and serving
        assert on_swarm.registry_digest(repository, tag)
    assert collect_once().deleted_from_registry == []  # nothing twice


def test_placement_constraints_pin_replicas_to_matching_nodes(
    swarm_client: TestClient, deployment: dict[str, Any], on_swarm: Cluster
) -> None:
    client = swarm_client
    patched = client.patch(
        f"/api/v1/deployments/{deployment['id']}",
        json={"replicas": 2, "placement": ["node.labels.shipway.node==swyn2"]},
        headers=auth(deployment["token"]),
    )
    assert patched.status_code == 200, patched.text
    release_id = promote(client, deployment, publish(client, deployment, "pinned", "pp"), "pm")
    replicas = get_runtime().replicas({RELEASE_LABEL: release_id})
    assert len(replicas) == 2
    assert {r.endpoint.address for r in replicas if r.endpoint} == {on_swarm.node_address(2)}


def test_canary_weights_and_warm_rollback_on_the_swarm(
    swarm_client: TestClient,
    deployment: dict[str, Any],
    on_swarm: Cluster,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A canary step sends part of the traffic to the new replicas on their nodes, the
    analysis passes, all traffic switches; a rollback inside the scale-down delay is warm:
    the stable release's replicas (Swarm services) were kept and serve again as they were."""
    monkeypatch.setenv("SHIPWAY_SCALE_DOWN_DELAY_SECONDS", "300")
    get_settings.cache_clear()
    client = swarm_client
    client.patch(
        f"/api/v1/deployments/{deployment['id']}",
        json={"replicas": 2},
        headers=auth(deployment["token"]),
    )
    stable = promote(client, deployment, publish(client, deployment, "stable", "cs"), "cms")
    stable_ids = sorted(r.id for r in get_runtime().replicas({RELEASE_LABEL: stable}))
    url = client.get(
        f"/api/v1/deployments/{deployment['id']}", headers=auth(deployment["token"])
    ).json()["environments"][0]["public_url"]
    answered(url, "stable")
    canary_version = publish(client, deployment, "canary", "cc")
    seen: dict[str, int] = {}
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            body = _body(url)
            seen[body] = seen.get(body, 0) + 1

    sender = threading.Thread(target=traffic, daemon=True)
    sender.start()
    try:
        strategy = {
            "type": "canary",
            "steps": [{"weight": 50, "pause_seconds": 2}],
            "analysis": {"interval_seconds": 1, "min_requests": 3, "max_error_rate": 0.01},
        }
        answer = client.post(
            f"/api/v1/deployments/{deployment['id']}/versions/{canary_version}/promote",
            json={"environment": "production", "strategy": strategy},
            headers=auth(deployment["token"], **{"Idempotency-Key": "canary"}),
        )
        assert answer.status_code == 202, answer.text
        job_id = answer.json()["job"]["id"]
        assert run_job(job_id) == "succeeded", _failure(job_id)
        answered(url, "canary")
    finally:
        stop.set()
        sender.join(timeout=10)
    assert seen.get("stable", 0) > 0 and seen.get("canary", 0) > 0, seen
    assert set(seen) <= {"stable", "canary"}, seen  # no failed request through the canary

    rolled = client.post(
        f"/api/v1/deployments/{deployment['id']}/rollback",
        json={"environment": "production"},
        headers=auth(deployment["token"], **{"Idempotency-Key": "warm"}),
    )
    assert rolled.status_code == 202, rolled.text
    assert run_job(rolled.json()["job"]["id"]) == "succeeded"
    answered(url, "stable")
    with transaction() as session:
        back = session.get(Release, stable)
        assert back is not None and back.status == "ACTIVE"
    # Warm: the same Swarm services serve again, none was created for the rollback.
    assert sorted(r.id for r in get_runtime().replicas({RELEASE_LABEL: stable})) == stable_ids
