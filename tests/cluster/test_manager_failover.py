"""A swarm of 3 managers loses its leader in the middle of a rollout (issue 14, item 4).

shipway's worker and relay (separate processes) know all three managers
(``SHIPWAY_SWARM_MANAGERS``) and build on a node that survives. A promote of 3 replicas
runs; the leader node is killed while the new replicas are scaled up or health-checked.
The job must end SUCCEEDED or FAILED with a diagnosis, one release stays ACTIVE, no
replica slot is doubled, and the database, Swarm and HAProxy agree afterwards."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from shipway.catalog.models import Release
from shipway.config import get_settings
from shipway.db import engine_for, transaction
from shipway.deployments.addresses import route_key
from shipway.releases.replicas import RELEASE_LABEL, REPLICA_LABEL
from shipway.router.current import router_config
from shipway.runtime import _runtime, get_runtime
from tests.cluster.conftest import BASE_IMAGE
from tests.cluster.scale import full_only
from tests.cluster.test_swarm_rollouts import _body, answered
from tests.conftest import auth, clean_up_rollouts, new_postgres_database
from tests.e2e.helpers import get_job, wait_for_job
from tests.e2e.rollout_support import phases
from tests.support.cluster import Cluster
from tests.support.hosts import Host, start_relay, start_worker
from tests.support.processes import Supervisor, wait_until
from tests.support.services import Postgres, start_redis
from tests.test_archive import site_archive

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1200)]


def leader(cluster: Cluster) -> int:
    """The index of the node that leads the swarm's managers now."""
    with cluster.manager_client() as client:
        for node in client.nodes.list():
            if (node.attrs.get("ManagerStatus") or {}).get("Leader"):
                return int(node.attrs["Description"]["Hostname"].removeprefix("swyn"))
    raise AssertionError("no leader")


@pytest.fixture(scope="module")
def base_image_of_three(three_managers: Cluster) -> str:
    return three_managers.load_image(BASE_IMAGE)


@pytest.fixture
def shipway_env(
    three_managers: Cluster,
    base_image_of_three: str,
    postgres_server: Postgres,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[dict[str, str]]:
    """shipway on the root namespace's host: every manager listed, builds on a follower."""
    cluster = three_managers
    builder = next(i for i in (3, 2, 1) if i != leader(cluster))
    redis = start_redis(tmp_path / "redis")
    router_dir = Path(tempfile.mkdtemp(prefix="swf-"))
    env = {
        "SHIPWAY_DATABASE_URL": new_postgres_database(postgres_server),
        "SHIPWAY_BROKER_URL": redis.url,
        "SHIPWAY_DATA_DIR": str(tmp_path / "data"),
        "SHIPWAY_ROUTER_DIR": str(router_dir),
        "SHIPWAY_RUNTIME": "swarm",
        "SHIPWAY_SWARM_MANAGERS": ",".join(cluster.node_docker_host(i) for i in (1, 2, 3)),
        "SHIPWAY_SWARM_FAILOVER_SECONDS": "90",
        "SHIPWAY_REGISTRY": cluster.registry_address,
        "SHIPWAY_BASE_IMAGE": base_image_of_three,
        "SHIPWAY_SCALE_DOWN_DELAY_SECONDS": "0",
        "SHIPWAY_STOP_TIMEOUT_SECONDS": "1",
        "SHIPWAY_DRAIN_TIMEOUT_SECONDS": "5",
        "SHIPWAY_LOG_LEVEL": "INFO",
        "DOCKER_HOST": cluster.node_docker_host(builder),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    _runtime.cache_clear()
    try:
        yield env
    finally:
        clean_up_rollouts(env["SHIPWAY_DATABASE_URL"], router_dir)
        engine_for(env["SHIPWAY_DATABASE_URL"]).dispose()
        redis.stop()
        _runtime.cache_clear()
        get_settings.cache_clear()


@pytest.fixture
def control_host(
    shipway_env: dict[str, str], tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Supervisor]:
    """A worker (builds and rollouts) and the relay on the root namespace's host."""
    host = Host(
        hostname="control", netns=None, settings={"DOCKER_HOST": shipway_env["DOCKER_HOST"]}
    )
    supervisor = Supervisor(log_dir=tmp_path / "logs")
    try:
        start_worker(supervisor, host, shared=shipway_env, name="w", queues="builds,rollouts")
        start_relay(supervisor, host, shared=shipway_env)
        yield supervisor
    finally:
        supervisor.stop_all()
        if request.session.testsfailed:
            print(supervisor.logs())


def _submit(client: TestClient, deployment: dict[str, Any], path: str, key: str, **kw: Any) -> Any:
    answer = client.post(
        f"/api/v1/deployments/{deployment['id']}/{path}",
        headers=auth(deployment["token"], **{"Idempotency-Key": key}),
        **kw,
    )
    assert answer.status_code == 202, answer.text
    return answer.json()


def _publish(client: TestClient, deployment: dict[str, Any], text: str) -> str:
    files = {"index.html": f"{text}\n".encode(), "healthz": b"ok\n"}
    archive = site_archive("tar.gz", files)
    sent = _submit(
        client,
        deployment,
        "versions",
        f"p-{text}",
        files={"source": ("s.tar.gz", archive, "application/gzip")},
    )
    job = wait_for_job(sent["job"]["id"], timeout=300)
    assert job.state == "succeeded", (job.failure_reason, job.failure_diagnostics)
    return str(sent["version"]["id"])


def _promote(client: TestClient, deployment: dict[str, Any], version_id: str) -> Any:
    body = {"environment": "production"}
    return _submit(
        client, deployment, f"versions/{version_id}/promote", f"m-{version_id}", json=body
    )


@full_only
def test_the_leader_killed_mid_rollout_ends_it_cleanly_with_nothing_doubled(
    three_managers: Cluster,
    control_host: Supervisor,
    client: TestClient,
    deployment: dict[str, Any],
    cluster_report: Callable[[str], None],
) -> None:
    cluster = three_managers
    patched = client.patch(
        f"/api/v1/deployments/{deployment['id']}",
        json={"replicas": 3},
        headers=auth(deployment["token"]),
    )
    assert patched.status_code == 200, patched.text
    first = _promote(client, deployment, _publish(client, deployment, "one"))
    done = wait_for_job(first["job"]["id"], timeout=300)
    assert done.state == "succeeded", (done.failure_reason, done.failure_diagnostics)
    r1 = first["release"]["id"]
    url = client.get(
        f"/api/v1/deployments/{deployment['id']}", headers=auth(deployment["token"])
    ).json()["environments"][0]["public_url"]
    answered(url, "one")
    v2 = _publish(client, deployment, "two")

    lost = leader(cluster)
    second = _promote(client, deployment, v2)
    job_id, r2 = second["job"]["id"], second["release"]["id"]

    def scaling() -> str | None:  # the phase, once a replica of the new release exists
        now = [name for name, _ in phases(job_id)]
        phase = now[-1] if now else None
        if phase in ("scale", "health_check") and get_runtime().replicas({RELEASE_LABEL: r2}):
            return phase
        return None

    phase = wait_until(scaling, timeout=120, interval=0.05, message="the promote never scaled")
    t0 = time.monotonic()
    cluster.kill_node(lost)
    assert get_job(job_id).state == "running", "the rollout ended before the leader was killed"

    job = wait_for_job(job_id, timeout=400)
    ended = time.monotonic() - t0
    assert job.state in ("succeeded", "failed")
    if job.state == "failed":  # a clean failure says why
        assert job.failure_reason, job.failure_diagnostics
        assert {"title", "description", "action"} <= set(job.failure_diagnostics or {})

    with transaction() as session:
        rows = session.scalars(
            select(Release).where(
                Release.deployment_id == deployment["id"], Release.environment == "production"
            )
        ).all()
        statuses = {row.id: row.status for row in rows}
    active = [rid for rid, status in statuses.items() if status == "ACTIVE"]
    assert active == [r2 if job.state == "succeeded" else r1], statuses
    gone = r1 if active == [r2] else r2
    dead = cluster.node_address(lost)
    key = route_key(deployment["id"], "production")

    def agreement() -> str:
        """What still disagrees (empty once DB, Swarm and HAProxy agree)."""
        serving = get_runtime().replicas({RELEASE_LABEL: active[0]})
        slots = sorted(r.labels.get(REPLICA_LABEL, "?") for r in serving)
        endpoints = {(r.endpoint.address, r.endpoint.port) for r in serving if r.endpoint}
        routed = {(s.address, s.port) for s in router_config().servers(key)}
        left = get_runtime().replicas({RELEASE_LABEL: gone})
        problems = [
            f"slots {slots}" if slots != ["0", "1", "2"] else "",
            "not all running" if not all(r.running for r in serving) else "",
            f"a replica on the dead node {dead}" if dead in {a for a, _ in endpoints} else "",
            f"routed {sorted(routed)} != replicas {sorted(endpoints)}"
            if routed != endpoints
            else "",
            f"{len(left)} replica(s) of {gone} left" if left else "",
        ]
        return "; ".join(p for p in problems if p)

    wait_until(lambda: agreement() == "", timeout=180, interval=0.5, message=agreement)
    agreed = time.monotonic() - t0
    expected = "two" if active == [r2] else "one"
    answers = [_body(url) for _ in range(100)]
    failovers = sum(
        "swarm manager" in line and "trying" in line
        for service in control_host.services
        for line in service.log().splitlines()
    )
    cluster_report(
        f"leader swyn{lost} killed during {phase}: promote {job.state}"
        f"{' (' + str(job.failure_reason) + ')' if job.failure_reason else ''} {ended:.1f}s "
        f"later; DB, Swarm and HAProxy agree {agreed:.1f}s after the kill; {failovers} manager "
        f"failover(s) logged; {answers.count(expected)} of 100 requests answered {expected!r}"
    )
    assert failovers >= 1  # the worker or the relay did move to another manager
    assert answers == [expected] * 100
