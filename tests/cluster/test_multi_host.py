"""shipway itself on several hosts (issue 14, item 5): Celery workers in the cluster's
network namespaces, each a host with its own hostname and its own Docker engine, sharing
PostgreSQL, Redis, the registry and the data dir (the namespaces share the filesystem: it
stands for shared storage such as NFS).

Builders run on hosts swyn2 and swyn3 (``DOCKER_HOST`` = their node's engine), the
rollouts worker on swyn1 (where HAProxy then runs: its sockets are host-local); service
operations go to the swarm's manager (``SHIPWAY_SWARM_MANAGERS``). The API runs in this
process (the root namespace)."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, select, text

from shipway.catalog.models import Version
from shipway.config import get_settings
from shipway.db import engine_for, transaction
from shipway.events.models import Event
from shipway.releases.replicas import RELEASE_LABEL
from shipway.runtime import _runtime, get_runtime
from tests.conftest import _migrate, auth, clean_up_rollouts
from tests.e2e.helpers import wait_for_all, wait_for_job
from tests.support.cluster import Cluster
from tests.support.hosts import Host, host_netns_inode, netns_inode, start_worker
from tests.support.processes import Supervisor, wait_until
from tests.support.services import Postgres, Redis, start_postgres, start_redis
from tests.test_archive import site_archive

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(900)]
ROLLOUTS_NODE = 1
BUILDER_NODES = (2, 3)


@pytest.fixture(scope="module")
def lab_services(cluster: Cluster, scratch: Path) -> Iterator[tuple[Postgres, Redis]]:
    """PostgreSQL and Redis listening on the cluster's root address too (every host reaches
    them there), with a migrated database ``shipway``."""
    folder = scratch / "multi-host"
    pg = start_postgres(
        folder / "pg", listen=(cluster.host_address,), trust=(f"{cluster.host_address}/24",)
    )
    redis = start_redis(folder / "redis", listen=(cluster.host_address,))
    try:
        admin = create_engine(pg.url(), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text("CREATE DATABASE shipway"))
        admin.dispose()
        _migrate(pg.url("shipway", host=cluster.host_address), folder)
        yield pg, redis
    finally:
        redis.stop()
        pg.stop("immediate")


@pytest.fixture
def shipway_env(
    cluster: Cluster,
    base_image_ref: str,
    lab_services: tuple[Postgres, Redis],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[dict[str, str]]:
    """The settings every host shares (this process's API included): the database, the
    broker and the registry at the root address, one data dir, the swarm's manager."""
    pg, redis = lab_services
    cleaner = create_engine(pg.url("shipway"))
    with cleaner.begin() as conn:  # a clean database for each test
        conn.execute(text("TRUNCATE workspaces CASCADE"))
    cleaner.dispose()
    router_dir = Path(tempfile.mkdtemp(prefix="swh-"))  # short: unix socket paths
    at = cluster.host_address
    env = {
        "SHIPWAY_DATABASE_URL": pg.url("shipway", host=at),
        "SHIPWAY_BROKER_URL": redis.url_at(at),
        "SHIPWAY_DATA_DIR": str(tmp_path / "data"),
        "SHIPWAY_ROUTER_DIR": str(router_dir),
        "SHIPWAY_ROUTER_BIND_HOST": cluster.node_address(ROLLOUTS_NODE),
        "SHIPWAY_RUNTIME": "swarm",
        "SHIPWAY_SWARM_MANAGERS": cluster.manager_docker_host(),
        "SHIPWAY_REGISTRY": cluster.registry_address,
        # Builders pull the static sites' base image from the registry, as a new host would.
        "SHIPWAY_BASE_IMAGE": base_image_ref,
        "SHIPWAY_SCALE_DOWN_DELAY_SECONDS": "0",
        "SHIPWAY_STOP_TIMEOUT_SECONDS": "1",
        "SHIPWAY_DRAIN_TIMEOUT_SECONDS": "5",
        "SHIPWAY_LOG_LEVEL": "INFO",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("DOCKER_HOST", cluster.manager_docker_host())
    get_settings.cache_clear()
    _runtime.cache_clear()
    yield env
    clean_up_rollouts(env["SHIPWAY_DATABASE_URL"], router_dir)  # HAProxy, Swarm services
    engine_for(env["SHIPWAY_DATABASE_URL"]).dispose()
    _runtime.cache_clear()
    get_settings.cache_clear()


def node_host(cluster: Cluster, i: int) -> Host:
    """Node ``i``'s network namespace as a host; its own engine builds."""
    return Host(
        hostname=f"host{i}",
        netns=cluster.node(i).name,
        settings={"DOCKER_HOST": cluster.node_docker_host(i)},
    )


@pytest.fixture
def hosts(
    cluster: Cluster, shipway_env: dict[str, str], tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Supervisor]:
    """Builders on hosts 2 and 3, the rollouts worker on host 1; all stopped at the end."""
    supervisor = Supervisor(log_dir=tmp_path / "logs")
    try:
        for i in BUILDER_NODES:
            start_worker(
                supervisor, node_host(cluster, i), shared=shipway_env, name=f"b{i}", queues="builds"
            )
        start_worker(
            supervisor,
            node_host(cluster, ROLLOUTS_NODE),
            shared=shipway_env,
            name="r1",
            queues="rollouts",
        )
        yield supervisor
    finally:
        supervisor.stop_all()
        if request.session.testsfailed:
            print(supervisor.logs())


def _host_of(job_id: str) -> str:
    """The hostname of the worker that ended the job (its event's actor hostname/pid/nonce)."""
    with transaction() as session:
        actor = session.scalars(
            select(Event.actor).where(
                Event.job_id == job_id, Event.subject_type == "job", Event.to_state == "succeeded"
            )
        ).one()
    return str(actor).split("/")[0]


def _has_image(cluster: Cluster, i: int, reference: str) -> bool:
    with cluster.client(i) as client:
        try:
            client.images.get(reference)
        except Exception:
            return False
        return True


def test_builders_on_two_hosts_share_jobs_and_another_host_promotes_from_the_registry(
    cluster: Cluster,
    hosts: Supervisor,
    client: TestClient,
    deployment: dict[str, Any],
    shipway_env: dict[str, str],
    cluster_report: Callable[[str], None],
) -> None:
    patched = client.patch(
        f"/api/v1/deployments/{deployment['id']}",
        json={"replicas": 3},
        headers=auth(deployment["token"]),
    )
    assert patched.status_code == 200, patched.text

    # (a) Four publishes through the shared queue: both builder hosts take some.
    published = []
    t0 = time.monotonic()
    for n in range(1, 5):
        files = {"index.html": f"built {n}\n".encode(), "healthz": b"ok\n"}
        answer = client.post(
            f"/api/v1/deployments/{deployment['id']}/versions",
            files={"source": ("s.tar.gz", site_archive("tar.gz", files), "application/gzip")},
            headers=auth(deployment["token"], **{"Idempotency-Key": f"mh{n}"}),
        )
        assert answer.status_code == 202, answer.text
        published.append((answer.json()["job"]["id"], answer.json()["version"]["id"]))
    jobs = wait_for_all([job_id for job_id, _ in published], timeout=400)
    assert [job.state for job in jobs] == ["succeeded"] * 4, [
        (job.failure_reason, job.failure_diagnostics) for job in jobs
    ]
    built = time.monotonic() - t0
    built_on = {version_id: _host_of(job_id) for job_id, version_id in published}
    assert set(built_on.values()) == {f"host{i}" for i in BUILDER_NODES}, built_on

    images: dict[str, tuple[str, str]] = {}  # version: (image id, runtime image)
    with transaction() as session:
        for version_id in built_on:
            row = session.get(Version, version_id)
            assert row is not None and row.artifact_sha256 and row.runtime_image
            images[version_id] = (row.artifact_sha256, row.runtime_image)
    for version_id, host in built_on.items():
        image_id, runtime_image = images[version_id]
        assert runtime_image.startswith(f"{cluster.registry_address}/")
        assert "@sha256:" in runtime_image  # run by digest, from the registry
        builder = int(host.removeprefix("host"))
        assert _has_image(cluster, builder, image_id), f"{host} did not build {version_id}"
        others = [i for i in (1, 2, 3) if i != builder]
        assert not any(_has_image(cluster, i, image_id) for i in others), (version_id, host)

    # (b) The newest version, built on a builder host, is promoted by the worker on host 1,
    # whose engine never had its image: replicas pull it by digest from the registry.
    version_id = published[-1][1]
    image_id, runtime_image = images[version_id]
    assert not _has_image(cluster, ROLLOUTS_NODE, image_id)
    assert not _has_image(cluster, ROLLOUTS_NODE, runtime_image)
    answer = client.post(
        f"/api/v1/deployments/{deployment['id']}/versions/{version_id}/promote",
        json={"environment": "production"},
        headers=auth(deployment["token"], **{"Idempotency-Key": "mh-promote"}),
    )
    assert answer.status_code == 202, answer.text
    t1 = time.monotonic()
    promote = wait_for_job(answer.json()["job"]["id"], timeout=300)
    promoted = time.monotonic() - t1
    assert promote.state == "succeeded", (promote.failure_reason, promote.failure_diagnostics)
    assert _host_of(promote.id) == f"host{ROLLOUTS_NODE}"

    replicas = get_runtime().replicas({RELEASE_LABEL: answer.json()["release"]["id"]})
    assert len(replicas) == 3 and all(r.running for r in replicas)
    on = {r.endpoint.address for r in replicas if r.endpoint}
    assert cluster.node_address(ROLLOUTS_NODE) in on  # one replica on the promoting host
    with cluster.manager_client() as manager:
        for replica in replicas:
            spec = manager.api.inspect_service(replica.id)["Spec"]["TaskTemplate"]
            assert spec["ContainerSpec"]["Image"] == runtime_image  # by digest
    with cluster.client(ROLLOUTS_NODE) as engine:
        pulled = engine.images.get(image_id)
    assert runtime_image in pulled.attrs["RepoDigests"]  # pulled from the registry by digest

    url = client.get(
        f"/api/v1/deployments/{deployment['id']}", headers=auth(deployment["token"])
    ).json()["environments"][0]["public_url"]
    assert url and cluster.node_address(ROLLOUTS_NODE) in url

    def site() -> httpx.Response | None:
        try:
            response = httpx.get(url, timeout=3)
        except httpx.HTTPError:
            return None
        return response if response.status_code == 200 else None

    answered = wait_until(site, timeout=30, message=f"{url} never answered 200")
    assert answered.text.strip() == "built 4"
    # HAProxy runs on the promoting host (its network namespace), nowhere else.
    router_pid = int(
        (Path(shipway_env["SHIPWAY_ROUTER_DIR"]) / "haproxy.pid").read_text().split()[0]
    )
    assert netns_inode(router_pid) == host_netns_inode(node_host(cluster, ROLLOUTS_NODE))
    counts = {h: list(built_on.values()).count(h) for h in sorted(set(built_on.values()))}
    cluster_report(
        f"4 publishes in {built:.1f}s, built per host {counts}; v4 (built on "
        f"{built_on[version_id]}) promoted by host{ROLLOUTS_NODE} in {promoted:.1f}s, its "
        "3 replicas pulled by digest, 200 through HAProxy on host1"
    )
