"""Shared pieces of the rollout end-to-end tests (real Docker engine, real HAProxy).

- test images built FROM the provisioned busybox base: each serves ``/`` with its
  own marker (so a response says which version answered), ``/healthz``, and two
  CGI endpoints: ``/cgi-bin/slow?N`` (answers after N seconds) and
  ``/cgi-bin/fail`` (HTTP 500 with a body);
- versions recorded as a finished build would (``artifact_sha256`` is the real
  image id, ``runtime_image`` its tag);
- the invariant checks: containers on the engine ↔ releases in the database ↔
  servers in HAProxy.

Every image built here carries the label ``shipway.test=rollouts`` and is removed
when the session ends; containers and HAProxy are removed per test by the
fixtures (``shipway_env`` in tests/conftest.py, ``rollout_stack`` below).
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import docker
import docker.errors
import httpx
import pytest
from sqlalchemy import select

from shipway.catalog.models import Deployment, Release
from shipway.config import get_settings
from shipway.db import session_factory, transaction
from shipway.deployments.addresses import route_key
from shipway.events.models import Event
from shipway.jobs.models import Job
from shipway.releases.replicas import RELEASE_LABEL
from shipway.router.base import RouterError, Server
from shipway.runtime import get_runtime
from shipway.runtime.base import Replica
from tests.e2e.conftest import Stack

BASE_IMAGE = "shipway/busybox:local"
TEST_LABEL = "shipway.test"
HTTPD = "httpd -f -p 8080 -h /srv/www"
# Container statuses whose replicas may run and be routed.
SERVING = ("ACTIVE", "UNHEALTHY", "DRAINING")


@dataclass(frozen=True)
class SiteImage:
    """A built test image: its tag, its id, and the marker its ``/`` answers with."""

    tag: str
    id: str
    marker: str


def build_site_image(marker: str, *, tag: str | None = None) -> SiteImage:
    """Build a tiny site image whose ``/`` answers ``marker``."""
    context = Path(tempfile.mkdtemp(prefix="sw-site-"))
    try:
        www = context / "www"
        (www / "cgi-bin").mkdir(parents=True)
        (www / "index.html").write_text(f"{marker}\n")
        (www / "healthz").write_text("ok\n")
        slow = www / "cgi-bin" / "slow"
        slow.write_text(
            "#!/bin/sh\nsleep ${QUERY_STRING:-5}\n"
            f"printf 'Content-Type: text/plain\\r\\n\\r\\n{marker} slow\\n'\n"
        )
        fail = www / "cgi-bin" / "fail"
        fail.write_text(
            "#!/bin/sh\nprintf 'Status: 500 Internal Server Error\\r\\n"
            "Content-Type: text/plain\\r\\n\\r\\n'\n"
            "echo 'database unreachable: connection refused'\n"
        )
        slow.chmod(0o755)
        fail.chmod(0o755)
        (context / "Dockerfile").write_text(
            f"FROM {BASE_IMAGE}\nCOPY www/ /srv/www/\nEXPOSE 8080\n"
            'CMD ["httpd", "-f", "-p", "8080", "-h", "/srv/www"]\n'
        )
        tag = tag or f"shipway-test/rollout-{marker}:{secrets.token_hex(3)}"
        return build_image(context, tag=tag, marker=marker)
    finally:
        shutil.rmtree(context, ignore_errors=True)


def build_image(context: Path, *, tag: str, marker: str) -> SiteImage:
    """Build the Dockerfile of ``context`` as ``tag`` (labelled for clean-up)."""
    client = docker.from_env()
    try:
        image, _logs = client.images.build(
            path=str(context), tag=tag, labels={TEST_LABEL: "rollouts"}, rm=True, pull=False
        )
    finally:
        client.close()
    assert image.id is not None
    return SiteImage(tag=tag, id=image.id, marker=marker)


def remove_image(reference: str) -> None:
    """Remove an image if present."""
    client = docker.from_env()
    try:
        client.images.remove(reference, force=True)
    except docker.errors.ImageNotFound:
        pass
    finally:
        client.close()


@pytest.fixture(scope="session")
def site_images() -> Iterator[dict[str, SiteImage]]:
    """Images v1, v2, v3 (markers ``site-v1`` …), removed at the end of the session."""
    images = {name: build_site_image(f"site-{name}") for name in ("v1", "v2", "v3")}
    yield images
    for image in images.values():
        remove_image(image.tag)


# --------------------------------------------------------------------------- records


def create_deployment(
    client: Any,
    token: dict[str, str],
    *,
    name: str | None = None,
    replicas: int = 2,
    health: dict[str, Any] | None = None,
    resources: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A container deployment through the API, with its health policy (``health``)."""
    body: dict[str, Any] = {
        "name": name or f"site-{secrets.token_hex(3)}",
        "kind": "container",
        "replicas": replicas,
        "runtime_port": 8080,
        "health_check_path": "/healthz",
    }
    if resources:
        body["resources"] = resources
    if health:
        body["health"] = health
    response = client.post(
        "/api/v1/deployments", json=body, headers={"Authorization": token["Authorization"]}
    )
    assert response.status_code == 201, response.text
    deployment = dict(response.json())
    for key, value in (health or {}).items():
        assert deployment["settings"]["health"][key] == value, deployment["settings"]
    return {**deployment, "token": token}


def set_health(deployment_id: str, health: dict[str, Any]) -> None:
    """Change fields of a deployment's ``settings["health"]`` in the database (no API yet)."""
    with transaction() as session:
        row = session.get(Deployment, deployment_id)
        assert row is not None
        current = dict((row.settings or {}).get("health") or {})
        row.settings = {**(row.settings or {}), "health": {**current, **health}}


def site_version(
    deployment_id: str,
    image: SiteImage,
    *,
    command: str | None = HTTPD,
    health_check_path: str | None = None,
) -> str:
    """A version walked to ``ready`` as a finished build records it (real image id and tag)."""
    from tests.support.seed import built_version

    return built_version(
        deployment_id,
        image_id=image.id,
        image_tag=image.tag,
        command=command,
        actor="test",
        health_check_path=health_check_path,
    )


def auth(deployment: dict[str, Any], key: str | None = None) -> dict[str, str]:
    """Headers of the deployment's token (plus an Idempotency-Key)."""
    headers = {"Authorization": deployment["token"]["Authorization"]}
    if key is not None:
        headers["Idempotency-Key"] = key
    return headers


def promote(
    client: Any, deployment: dict[str, Any], version_id: str, environment: str = "production"
) -> dict[str, Any]:
    """``POST …/promote``; returns ``{"release", "job"}`` (asserts 202)."""
    response = client.post(
        f"/api/v1/deployments/{deployment['id']}/versions/{version_id}/promote",
        json={"environment": environment},
        headers=auth(deployment, secrets.token_hex(8)),
    )
    assert response.status_code == 202, response.text
    return dict(response.json())


def rollback(
    client: Any,
    deployment: dict[str, Any],
    to_version_id: str | None = None,
    environment: str = "production",
) -> httpx.Response:
    """``POST /deployments/{id}/rollback`` (the raw response)."""
    body: dict[str, Any] = {"environment": environment}
    if to_version_id:
        body["to_version_id"] = to_version_id
    response: httpx.Response = client.post(
        f"/api/v1/deployments/{deployment['id']}/rollback",
        json=body,
        headers=auth(deployment, secrets.token_hex(8)),
    )
    return response


def run(job_id: str) -> str | None:
    """Run a job in this process (no broker); returns its final state."""
    from shipway.jobs.runner import run_job

    return run_job(job_id)


def public_url(client: Any, deployment: dict[str, Any], environment: str = "production") -> str:
    """The environment's public URL as ``GET /deployments/{id}`` reports it."""
    response = client.get(f"/api/v1/deployments/{deployment['id']}", headers=auth(deployment))
    assert response.status_code == 200, response.text
    env = next(e for e in response.json()["environments"] if e["name"] == environment)
    assert env["public_url"], env
    return str(env["public_url"])


def fetch(url: str, path: str = "/", *, timeout: float = 10.0) -> str:
    """GET ``url + path``; asserts 200 and returns the body without its trailing newline."""
    response = httpx.get(url + path, timeout=timeout)
    assert response.status_code == 200, (response.status_code, response.text)
    return response.text.strip()


# --------------------------------------------------------------------------- reads


def release(release_id: str) -> Release:
    """The release row now (detached)."""
    with session_factory()() as session:
        row = session.get(Release, release_id)
        assert row is not None, release_id
        session.expunge(row)
        return row


def releases(deployment_id: str) -> list[Release]:
    """Every release of a deployment, oldest first (detached)."""
    with session_factory()() as session:
        rows = list(
            session.scalars(
                select(Release)
                .where(Release.deployment_id == deployment_id)
                .order_by(Release.created_at, Release.id)
            )
        )
        for row in rows:
            session.expunge(row)
        return rows


def job(job_id: str) -> Job:
    """The job row now (detached)."""
    with session_factory()() as session:
        row = session.get(Job, job_id)
        assert row is not None, job_id
        session.expunge(row)
        return row


def phases(job_id: str) -> list[tuple[str, datetime]]:
    """The phases a job entered, in order, with when (``job_phase`` events)."""
    with session_factory()() as session:
        rows = session.execute(
            select(Event.to_state, Event.created_at)
            .where(Event.job_id == job_id, Event.subject_type == "job_phase")
            .order_by(Event.id)
        ).all()
        return [(str(r.to_state), r.created_at) for r in rows]


def containers(release_id: str) -> list[Replica]:
    """The engine's containers of one release (running or not), by name."""
    found = get_runtime().replicas({RELEASE_LABEL: release_id})
    return sorted(found, key=lambda r: r.name)


def deployment_containers(deployment_id: str) -> list[Replica]:
    """Every container on the engine labelled with this deployment."""
    return get_runtime().replicas({"shipway.deployment": deployment_id})


def router_servers(deployment_id: str, environment: str = "production") -> list[Server]:
    """HAProxy's servers of the environment's route ([] if it has no route yet)."""
    from shipway.router.current import router_config

    router = router_config()
    if not router.is_running():
        return []
    try:
        return router.servers(route_key(deployment_id, environment))
    except RouterError:
        return []


def pending_retire(deployment_id: str) -> set[str]:
    """Release ids whose delayed retire job has not run yet."""
    with session_factory()() as session:
        rows = session.scalars(
            select(Job.release_id).where(
                Job.deployment_id == deployment_id,
                Job.kind == "retire",
                Job.state.in_(("queued", "running")),
            )
        ).all()
        return {r for r in rows if r}


def assert_consistent(deployment_id: str, environment: str = "production") -> None:
    """Engine, database and router agree, once no rollout of the deployment is running.

    - at most one ACTIVE release; no DEPLOYING release is left;
    - each ACTIVE/DRAINING release has exactly ``replicas`` running containers,
      named ``sw-<release>-<i>``; a ROLLED_BACK release keeps its warm containers
      only while its delayed retire job is pending; no other release has any, and
      no container belongs to an unknown release (no orphans);
    - HAProxy's servers are exactly those containers (same host ports); ready ones
      belong to the ACTIVE release, the others are draining.
    """
    rows = [r for r in releases(deployment_id) if r.environment == environment]
    by_id = {r.id: r for r in rows}
    active = [r for r in rows if r.status == "ACTIVE"]
    assert len(active) <= 1, [(r.id, r.status) for r in rows]
    assert not [r for r in rows if r.status == "DEPLOYING"], [(r.id, r.status) for r in rows]
    warm = pending_retire(deployment_id)
    engine = [
        c for c in deployment_containers(deployment_id) if c.labels.get("shipway.environment")
    ]
    engine = [c for c in engine if c.labels["shipway.environment"] == environment]
    by_release: dict[str, list[Replica]] = {}
    for container in engine:
        owner = container.labels.get(RELEASE_LABEL, "")
        assert owner in by_id, f"orphan container {container.name} of unknown release {owner}"
        by_release.setdefault(owner, []).append(container)
    expected_names: dict[str, int | None] = {}
    for row in rows:
        have = sorted(by_release.get(row.id, []), key=lambda c: c.name)
        if row.status in SERVING or (row.status == "ROLLED_BACK" and row.id in warm and have):
            names = [c.name for c in have]
            assert names == [f"sw-{row.id}-{i}" for i in range(row.replicas)], (
                row.id,
                row.status,
                row.replicas,
                names,
            )
            assert all(c.running for c in have), [(c.name, c.status) for c in have]
            for c in have:
                expected_names[c.name] = c.host_port
        else:
            assert not have, f"{row.status} release {row.id} still has {[c.name for c in have]}"
    servers = router_servers(deployment_id, environment)
    assert {s.name: s.port for s in servers} == expected_names, (servers, expected_names)
    serving = {s.name for s in servers if s.state == "ready"}
    active_names = {f"sw-{r.id}-{i}" for r in active for i in range(r.replicas)}
    assert serving == active_names, (servers, active_names)
    assert all(s.state == "drain" for s in servers if s.name not in active_names), servers


# --------------------------------------------------------------------------- real processes


@pytest.fixture
def rollout_stack(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    """The e2e ``stack`` plus a router folder of its own; removes HAProxy and containers."""
    from tests.conftest import clean_up_rollouts

    router_dir = Path(tempfile.mkdtemp(prefix="swr-"))
    extra = {
        "SHIPWAY_ROUTER_DIR": str(router_dir),
        "SHIPWAY_SCALE_DOWN_DELAY_SECONDS": "0",
        "SHIPWAY_STOP_TIMEOUT_SECONDS": "1",
        "SHIPWAY_DRAIN_TIMEOUT_SECONDS": "5",
    }
    stack.settings.update(extra)
    for key, value in extra.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    try:
        yield stack
    finally:
        # Workers first, so none creates a container after the clean-up.
        for worker in stack.workers:
            worker.kill()
        stack.supervisor.stop_all()
        clean_up_rollouts(stack.settings["SHIPWAY_DATABASE_URL"], router_dir)
