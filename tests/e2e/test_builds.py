"""Publish end to end on the real Docker engine: builds, failures, timeouts, logs, lost workers.

The API runs in-process (TestClient) against the test's own PostgreSQL database
and Redis broker; publish jobs run in-process with ``run_job`` once the API has
accepted them, except in the lost-worker test, which builds in a real
``shipway worker`` process and SIGKILLs it mid-build. Every image and container
a test creates is removed at the end (images carry ``shipway.deployment``;
build steps echo a per-test marker so their containers can be found).
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import docker
import docker.errors
import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from shipway.catalog.models import Version
from shipway.config import get_settings
from shipway.db import session_factory, transaction
from shipway.events.models import Event
from shipway.jobs.models import Job
from shipway.jobs.relay import relay_once
from shipway.jobs.runner import run_job
from tests.e2e.conftest import Stack
from tests.e2e.helpers import get_job, owner_pid
from tests.support.processes import wait_until
from tests.test_archive import Entry, tar_bytes

pytestmark = pytest.mark.e2e

BASE_IMAGE = "shipway/busybox:local"


@pytest.fixture(scope="module")
def engine() -> Iterator[docker.DockerClient]:
    """The local Docker engine, with the provisioned base image."""
    client = docker.from_env()
    try:
        client.images.get(BASE_IMAGE)
    except docker.errors.ImageNotFound:
        pytest.fail(f"{BASE_IMAGE} is missing: run `make provision` (scripts/provision.sh)")
    yield client
    client.close()


@dataclass
class Builds:
    """An in-process API with a write token, and cleanup of what the engine holds for it."""

    client: TestClient
    headers: dict[str, str]
    engine: docker.DockerClient
    marker: str = field(default_factory=lambda: f"shipway-e2e-{secrets.token_hex(4)}")
    deployments: list[str] = field(default_factory=list)

    def deployment(self, kind: str = "static", **settings: Any) -> str:
        """Create a deployment; its images are removed at the end of the test."""
        name = f"{kind}-{secrets.token_hex(3)}"
        response = self.client.post(
            "/api/v1/deployments",
            json={"name": name, "kind": kind, **settings},
            headers=self.headers,
        )
        assert response.status_code == 201, response.text
        self.deployments.append(response.json()["id"])
        return str(response.json()["id"])

    def publish(self, deployment_id: str, archive: bytes, **form: str) -> dict[str, Any]:
        """Upload a source; the API must accept it (202)."""
        response = self.client.post(
            f"/api/v1/deployments/{deployment_id}/versions",
            files={"source": ("source.tar.gz", archive, "application/gzip")},
            data=form,
            headers={**self.headers, "Idempotency-Key": secrets.token_hex(8)},
        )
        assert response.status_code == 202, response.text
        body: dict[str, Any] = response.json()
        assert body["job"]["kind"] == "publish" and body["job"]["queue"] == "builds"
        return body

    def version(self, deployment_id: str, version_id: str) -> dict[str, Any]:
        """The full version row as the API shows it."""
        response = self.client.get(
            f"/api/v1/deployments/{deployment_id}/versions/{version_id}", headers=self.headers
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def build_log(self, deployment_id: str, version_id: str) -> str:
        """The build log as plain text."""
        response = self.client.get(
            f"/api/v1/deployments/{deployment_id}/versions/{version_id}/build-log",
            headers=self.headers,
        )
        assert response.status_code == 200, response.text
        return response.text

    def marked_containers(self) -> list[str]:
        """Ids of every container (any state) whose command carries this test's marker."""
        return [
            c.id
            for c in self.engine.containers.list(all=True, ignore_removed=True)
            if self.marker in " ".join(c.attrs.get("Config", {}).get("Cmd") or [])
        ]

    def cleanup(self) -> None:
        """Remove containers and images this test made."""
        for container_id in self.marked_containers():
            self._remove_container(container_id)
        for deployment_id in self.deployments:
            selector = {"label": f"shipway.deployment={deployment_id}"}
            for container in self.engine.containers.list(all=True, filters=selector):
                self._remove_container(container.id)
            for image in self.engine.images.list(filters=selector):
                with contextlib.suppress(docker.errors.NotFound):
                    self.engine.images.remove(image.id, force=True)

    def _remove_container(self, container_id: str | None) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            self.engine.api.remove_container(container_id, force=True)


@pytest.fixture
def builds(stack: Stack, engine: docker.DockerClient) -> Iterator[Builds]:
    """An API client on the stack's database, a write token, and engine cleanup."""
    from shipway.api import create_app
    from shipway.auth.service import create_token, get_or_create_workspace

    with transaction() as session:
        workspace = get_or_create_workspace(session, name="builds", external_workspace_id=None)
        _token, secret = create_token(
            session, workspace_id=workspace.id, scopes=["deployments:write"]
        )
    with TestClient(create_app(), raise_server_exceptions=False) as client:
        harness = Builds(
            client=client, headers={"Authorization": f"Bearer {secret}"}, engine=engine
        )
        try:
            yield harness
        finally:
            harness.cleanup()


def static_site(marker: str) -> tuple[bytes, bytes]:
    """A tar.gz static site and its index.html (unique per test: no build cache reuse)."""
    index = f"<!doctype html><title>{marker}</title><h1>hello from {marker}</h1>\n".encode()
    archive = tar_bytes(
        [
            Entry("index.html", index),
            Entry("css", type=tarfile.DIRTYPE, mode=0o755),
            Entry("css/site.css", b"h1 { color: teal; }\n"),
        ],
        gz=True,
    )
    return archive, index


def dockerfile_source(dockerfile: str, **files: bytes) -> bytes:
    """A tar.gz holding ``Dockerfile`` and ``files``."""
    entries = [Entry("Dockerfile", dockerfile.encode())]
    entries += [Entry(name, data) for name, data in files.items()]
    return tar_bytes(entries, gz=True)


def version_row(version_id: str) -> Version:
    """The version as the database holds it now."""
    with session_factory()() as session:
        version = session.get(Version, version_id)
        assert version is not None
        session.expunge(version)
        return version


def version_states(version_id: str) -> list[tuple[str | None, str | None]]:
    """The version's recorded transitions (from, to), oldest first."""
    with session_factory()() as session:
        rows = session.scalars(
            select(Event)
            .where(Event.subject_type == "version", Event.subject_id == version_id)
            .order_by(Event.id)
        ).all()
        return [(e.from_state, e.to_state) for e in rows]


# --------------------------------------------------------------------------- success


def test_static_site_builds_into_a_serving_image(builds: Builds) -> None:
    deployment_id = builds.deployment("static")
    archive, index = static_site(builds.marker)
    accepted = builds.publish(deployment_id, archive, git_hash="abc123")
    version_id, job_id = accepted["version"]["id"], accepted["job"]["id"]

    assert run_job(job_id) == "succeeded"

    version = builds.version(deployment_id, version_id)
    assert version["state"] == "ready", version["build_failure_diagnostics"]
    tag = f"shipway/{deployment_id}:v1"
    assert version["runtime_image"] == tag
    image = builds.engine.images.get(tag)
    assert image.labels["shipway.deployment"] == deployment_id
    assert image.labels["shipway.version"] == version_id
    assert version["artifact_sha256"] == image.id.removeprefix("sha256:")
    assert version["source_sha256"] == hashlib.sha256(archive).hexdigest()
    assert version["runtime_port"] == 8080
    assert version["runtime_command"] == "httpd -f -v -p 8080 -h /srv/www"
    assert version["health_check_path"] == "/"

    manifest = version["artifact_manifest"]
    files = {f["path"]: f for f in manifest["files"]}
    assert set(files) == {"index.html", "css/site.css"}
    assert files["index.html"]["sha256"] == hashlib.sha256(index).hexdigest()
    assert files["index.html"]["size"] == len(index)
    assert manifest["image"]["image_id"] == image.id
    assert manifest["image"]["layers"] == image.attrs["RootFS"]["Layers"]
    assert manifest["image"]["size"] == image.attrs["Size"] > 0
    assert manifest["image"]["exposed_ports"] == ["8080/tcp"]
    assert tag in manifest["image"]["tags"]

    job = get_job(job_id)
    assert job.state == "succeeded" and job.result is not None
    assert job.result["image_id"] == image.id and job.result["promote_job_id"] is None
    assert version_states(version_id) == [
        (None, "created"),
        ("created", "building"),
        ("building", "ready"),
    ]
    log = builds.build_log(deployment_id, version_id)
    assert "COPY site/ /srv/www/" in log and "shipway: build succeeded" in log

    # The image really serves the uploaded file.
    container = builds.engine.containers.run(
        tag,
        detach=True,
        ports={"8080/tcp": ("127.0.0.1", None)},
        labels={"shipway.deployment": deployment_id},
    )
    try:
        container.reload()
        port = int(container.ports["8080/tcp"][0]["HostPort"])

        def fetch() -> httpx.Response | None:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/", timeout=2.0)
            except httpx.HTTPError:
                return None

        page = wait_until(fetch, timeout=15, message="the built image never answered on 8080")
        assert page.status_code == 200
        assert page.content == index
    finally:
        container.remove(force=True)


def test_container_kind_builds_and_records_its_exposed_port(builds: Builds) -> None:
    deployment_id = builds.deployment("container", runtime_port=5000, health_check_path="/ping")
    source = dockerfile_source(
        f"FROM {BASE_IMAGE}\n"
        f"RUN echo {builds.marker} > /marker\n"
        "COPY www/ /www/\n"
        "EXPOSE 5000\n"
        'CMD ["httpd", "-f", "-p", "5000", "-h", "/www"]\n',
        **{"www/ping": b"pong\n"},
    )
    accepted = builds.publish(deployment_id, source, runtime_command="httpd -f -p 5000 -h /www")

    assert run_job(accepted["job"]["id"]) == "succeeded"

    version = builds.version(deployment_id, accepted["version"]["id"])
    assert version["state"] == "ready", version["build_failure_diagnostics"]
    image = builds.engine.images.get(version["runtime_image"])
    assert version["artifact_sha256"] == image.id.removeprefix("sha256:")
    assert version["artifact_manifest"]["image"]["exposed_ports"] == ["5000/tcp"]
    assert "files" not in version["artifact_manifest"]
    assert (version["runtime_port"], version["health_check_path"]) == (5000, "/ping")
    assert version["runtime_command"] == "httpd -f -p 5000 -h /www"
    assert builds.marked_containers() == []  # intermediate build containers removed


def test_promote_to_production_after_the_build(builds: Builds, engine: docker.DockerClient) -> None:
    deployment_id = builds.deployment("static")
    archive, _ = static_site(builds.marker)
    accepted = builds.publish(deployment_id, archive, promote_to="production")

    assert run_job(accepted["job"]["id"]) == "succeeded"

    result = get_job(accepted["job"]["id"]).result
    assert result is not None and result["promote_job_id"]
    promote_job_id = result["promote_job_id"]
    promote = get_job(promote_job_id)
    assert (promote.kind, promote.queue, promote.state) == ("promote", "rollouts", "queued")
    assert promote.version_id == accepted["version"]["id"]
    assert promote.environment == "production"

    assert run_job(promote_job_id) == "succeeded"

    version = builds.version(deployment_id, accepted["version"]["id"])
    assert version["state"] == "ready"
    assert version["status"] == "ACTIVE"
    assert version["promoted_at"] is not None
    assert [r["environment"] for r in version["releases"]] == ["production"]
    assert version["releases"][0]["image_url"] == version["runtime_image"]
    listed = builds.client.get(f"/api/v1/deployments/{deployment_id}", headers=builds.headers)
    production = next(e for e in listed.json()["environments"] if e["name"] == "production")
    assert production["active_version_id"] == accepted["version"]["id"]
    assert production["status"] == "ACTIVE"
    # The replica that passed the health check is hardened (runtime.hardening: static).
    (replica,) = engine.containers.list(filters={"label": f"shipway.deployment={deployment_id}"})
    host = replica.attrs["HostConfig"]
    assert replica.attrs["Config"]["User"] == "65534:65534" and host["ReadonlyRootfs"]
    assert host["CapDrop"] == ["ALL"] and host["SecurityOpt"] == ["no-new-privileges:true"]


# --------------------------------------------------------------------------- failures


def test_failing_step_is_build_failed_with_evidence(builds: Builds) -> None:
    deployment_id = builds.deployment("container")
    step = f"RUN echo {builds.marker}-before-failure && false"
    accepted = builds.publish(deployment_id, dockerfile_source(f"FROM {BASE_IMAGE}\n{step}\n"))
    version_id = accepted["version"]["id"]

    assert run_job(accepted["job"]["id"]) == "failed"

    version = builds.version(deployment_id, version_id)
    assert version["state"] == "failed"
    assert version["failure_reason"] == version["build_failure_reason"] == "build_failed"
    diagnostics = version["build_failure_diagnostics"]
    assert {"title", "description", "action", "evidence"} <= set(diagnostics)
    evidence = diagnostics["evidence"]
    assert evidence["failing_step"].endswith(step)
    assert any(f"{builds.marker}-before-failure" in line for line in evidence["last_log_lines"])
    assert "non-zero code: 1" in evidence["error"]
    assert version["runtime_image"] is None and version["artifact_sha256"] is None
    job = get_job(accepted["job"]["id"])
    assert (job.state, job.failure_reason) == ("failed", "build_failed")
    log = builds.build_log(deployment_id, version_id)
    assert step in log and "shipway: build failed" in log
    assert builds.marked_containers() == []
    assert builds.engine.images.list(filters={"label": f"shipway.deployment={deployment_id}"}) == []


def test_missing_base_image_is_image_pull_failed(builds: Builds) -> None:
    deployment_id = builds.deployment("container")
    missing = f"shipway-e2e/not-here-{secrets.token_hex(3)}:1"
    accepted = builds.publish(deployment_id, dockerfile_source(f"FROM {missing}\nRUN true\n"))

    assert run_job(accepted["job"]["id"]) == "failed"

    version = builds.version(deployment_id, accepted["version"]["id"])
    assert (version["state"], version["failure_reason"]) == ("failed", "image_pull_failed")
    diagnostics = version["build_failure_diagnostics"]
    assert missing in diagnostics["action"]
    assert diagnostics["evidence"]["image"] == missing
    assert diagnostics["evidence"]["failing_step"].endswith(f"FROM {missing}")


def test_build_timeout_stops_the_build_and_leaves_no_container(
    builds: Builds, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHIPWAY_BUILD_TIMEOUT_SECONDS", "3")
    get_settings.cache_clear()
    deployment_id = builds.deployment("container")
    step = f"RUN echo {builds.marker} && sleep 60"
    accepted = builds.publish(deployment_id, dockerfile_source(f"FROM {BASE_IMAGE}\n{step}\n"))
    before = {c.id for c in builds.engine.containers.list(all=True)}
    seen_running: list[str] = []

    def watch() -> None:  # prove the check below could see the build's container
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not seen_running:
            seen_running.extend(builds.marked_containers())
            time.sleep(0.1)

    watcher = threading.Thread(target=watch)
    watcher.start()
    started = time.monotonic()
    state = run_job(accepted["job"]["id"])
    elapsed = time.monotonic() - started
    watcher.join()

    assert state == "failed"
    assert elapsed < 30, f"a 3 s build timeout took {elapsed:.1f}s"
    assert seen_running, "the build's RUN container was never seen"
    version = builds.version(deployment_id, accepted["version"]["id"])
    assert (version["state"], version["failure_reason"]) == ("failed", "build_timeout")
    evidence = version["build_failure_diagnostics"]["evidence"]
    assert evidence["timeout_seconds"] == 3
    assert evidence["failing_step"].endswith(step)
    assert "SHIPWAY_BUILD_TIMEOUT_SECONDS" in version["build_failure_diagnostics"]["action"]
    # No dangling build container: not the one we saw, and nothing new from this build.
    wait_until(lambda: builds.marked_containers() == [], timeout=10, message="build container left")
    after = {c.id for c in builds.engine.containers.list(all=True)}
    assert not set(seen_running) & after
    new = [
        c
        for c in builds.engine.containers.list(all=True, ignore_removed=True)
        if c.id in after - before and builds.marker in str(c.attrs.get("Config", {}).get("Cmd"))
    ]
    assert new == []


# --------------------------------------------------------------------------- logs


def test_build_log_follow_streams_until_the_build_ends(builds: Builds) -> None:
    deployment_id = builds.deployment("container")
    loop = f"RUN for i in 1 2 3 4; do echo {builds.marker}-tick-$i; sleep 1; done"
    accepted = builds.publish(deployment_id, dockerfile_source(f"FROM {BASE_IMAGE}\n{loop}\n"))
    version_id = accepted["version"]["id"]
    finished: dict[str, float] = {}

    def build() -> None:
        time.sleep(0.5)  # the follower is connected before the build starts
        run_job(accepted["job"]["id"])
        finished["at"] = time.monotonic()

    worker = threading.Thread(target=build)
    received: list[tuple[float, str]] = []
    worker.start()
    try:
        with builds.client.stream(
            "GET",
            f"/api/v1/deployments/{deployment_id}/versions/{version_id}/build-log",
            params={"follow": "1"},
            headers=builds.headers,
        ) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/plain")
            for line in response.iter_lines():
                received.append((time.monotonic(), line))
        ended = time.monotonic()
    finally:
        worker.join(timeout=60)

    lines = [line for _, line in received]
    ticks = [at for at, line in received if f"{builds.marker}-tick-" in line and "echo" not in line]
    assert len(ticks) == 4, lines
    assert ticks[0] < finished["at"] - 1.5, "the first lines arrived only at the end"
    assert ended >= finished["at"] - 0.1  # the stream ended once the build had ended
    assert any("shipway: build succeeded" in line for line in lines), lines
    assert builds.version(deployment_id, version_id)["state"] == "ready"
    # After the build, follow returns the whole log at once and ends.
    again = builds.client.get(
        f"/api/v1/deployments/{deployment_id}/versions/{version_id}/build-log",
        params={"follow": "1"},
        headers=builds.headers,
    )
    assert again.text == builds.build_log(deployment_id, version_id)
    assert again.text.splitlines() == lines


# --------------------------------------------------------------------------- lost worker


def test_worker_killed_mid_build_is_rebuilt_to_ready(stack: Stack, builds: Builds) -> None:
    worker = stack.start_worker("builder", queues="builds")
    deployment_id = builds.deployment("container")
    step = f"RUN echo {builds.marker} && sleep 8"
    accepted = builds.publish(
        deployment_id, dockerfile_source(f'FROM {BASE_IMAGE}\n{step}\nCMD ["sleep", "1"]\n')
    )
    version_id, job_id = accepted["version"]["id"], accepted["job"]["id"]
    followed: list[str] = []
    follower = threading.Thread(
        target=_follow_log, args=(builds, deployment_id, version_id, followed), daemon=True
    )
    follower.start()  # someone watching the log across the crash and the retry

    def building_in_worker() -> str | None:
        job = get_job(job_id)
        if job.state == "running" and job.lease_owner and builds.marked_containers():
            return job.lease_owner
        return None

    owner = wait_until(
        building_in_worker, timeout=60, message=lambda: f"never built:\n{worker.log_tail()}"
    )
    assert version_row(version_id).state == "building"
    assert stack.supervisor.owner_of(owner_pid(owner)) is worker
    worker.kill()  # SIGKILL the whole process group: no cleanup code runs

    # The engine cancels the build once its client is gone: no build container left.
    wait_until(lambda: builds.marked_containers() == [], timeout=20, message="build container left")

    def requeued() -> Job | None:
        relay_once()
        job = get_job(job_id)
        return job if job.state == "queued" else None

    job = wait_until(requeued, timeout=30, interval=0.5, message="the lost build was not requeued")
    assert job.attempts == 1 and job.lease_owner is None
    assert version_row(version_id).state == "building"  # until the retry rebuilds it

    assert run_job(job_id) == "succeeded"

    job = get_job(job_id)
    assert (job.state, job.attempts) == ("succeeded", 2)
    version = builds.version(deployment_id, version_id)
    assert version["state"] == "ready", version["build_failure_diagnostics"]
    image_id = builds.engine.images.get(version["runtime_image"]).id
    assert image_id == "sha256:" + version["artifact_sha256"]
    assert version_states(version_id) == [
        (None, "created"),
        ("created", "building"),
        ("building", "building"),  # "build restarted from a clean state (attempt 2)"
        ("building", "ready"),
    ]
    log = builds.build_log(deployment_id, version_id)
    assert "attempt 2" in log and "shipway: build succeeded" in log
    assert builds.marked_containers() == []
    follower.join(timeout=10)
    assert not follower.is_alive(), "following the log did not end with the build"
    text = "".join(followed)
    assert "attempt 1" in text  # the first attempt, live
    assert text.endswith(log), "the follower missed part of the retry's log"


def _follow_log(builds: Builds, deployment_id: str, version_id: str, out: list[str]) -> None:
    """Follow a build log on a client of its own, appending each chunk to ``out``."""
    from shipway.api import create_app

    with (
        TestClient(create_app()) as client,
        client.stream(
            "GET",
            f"/api/v1/deployments/{deployment_id}/versions/{version_id}/build-log",
            params={"follow": "1"},
            headers=builds.headers,
            timeout=120,
        ) as response,
    ):
        for chunk in response.iter_text():
            out.append(chunk)
