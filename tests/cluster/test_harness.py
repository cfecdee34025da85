"""The cluster harness itself: a swarm of Ready nodes, a registry the nodes pull from by
digest, host-mode published ports reachable from the root namespace, node kill and restart."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable, Iterator

import docker
import pytest
from docker.types import EndpointSpec, RestartPolicy, ServiceMode

from tests.cluster.scale import full_only
from tests.support.cluster import Cluster, wait_for

pytestmark = pytest.mark.cluster

PORT = 18080  # host-mode published port of the test service on every node
WEB = [
    "sh",
    "-c",
    'mkdir -p /w && echo "$NODE" > /w/index.html && exec httpd -f -p 8080 -h /w',
]


def _get(url: str) -> tuple[int, str]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=2) as response:
        return response.status, response.read().decode().strip()


@pytest.fixture
def manager(cluster: Cluster) -> Iterator[docker.DockerClient]:
    client = docker.DockerClient(base_url=cluster.manager_docker_host())
    yield client
    for service in client.services.list():  # each test leaves a swarm without services
        service.remove()
    client.close()


def test_every_node_is_ready_in_the_swarm(cluster: Cluster, manager: docker.DockerClient) -> None:
    nodes = manager.nodes.list()
    assert sorted(n.attrs["Description"]["Hostname"] for n in nodes) == ["swyn1", "swyn2", "swyn3"]
    assert all(n.attrs["Status"]["State"] == "ready" for n in nodes)
    addresses = {n.attrs["Status"]["Addr"] for n in nodes}
    assert addresses == {cluster.node_address(i) for i in (1, 2, 3)}
    roles = {n.attrs["Description"]["Hostname"]: n.attrs["Spec"]["Role"] for n in nodes}
    assert roles == {"swyn1": "manager", "swyn2": "worker", "swyn3": "worker"}
    for i in (1, 2, 3):  # each node is its own engine, with the registry trusted
        with cluster.client(i) as client:
            info = client.info()
        assert info["Name"] == f"swyn{i}"
        assert cluster.registry_address in str(info["RegistryConfig"]["IndexConfigs"])


def test_registry_serves_the_pushed_image_by_digest(cluster: Cluster, base_image_ref: str) -> None:
    registry, _, rest = base_image_ref.partition("/")
    repository, _, digest = rest.partition("@")
    assert registry == cluster.registry_address
    assert digest.startswith("sha256:")
    assert repository in cluster.registry_repositories()
    assert cluster.registry_digest(repository, "local") == digest


def test_service_pulled_by_digest_answers_on_every_node(
    cluster: Cluster,
    base_image_ref: str,
    manager: docker.DockerClient,
    cluster_report: Callable[[str], None],
) -> None:
    t0 = time.monotonic()
    service = manager.services.create(
        base_image_ref,
        command=WEB,
        name="harness-web",
        env=["NODE={{.Node.Hostname}}"],  # a Swarm template: each task says where it runs
        init=True,
        stop_grace_period=2_000_000_000,
        mode=ServiceMode("replicated", replicas=3),
        endpoint_spec=EndpointSpec(ports={PORT: (8080, "tcp", "host")}),
        preferences=[("spread", "node.labels.shipway.node")],  # one task per node
        maxreplicas=1,
        restart_policy=RestartPolicy(condition="any", delay=500_000_000),
    )

    def answers() -> dict[int, str] | None:
        bodies = {}
        for i in (1, 2, 3):
            try:
                status, body = _get(f"http://{cluster.node_address(i)}:{PORT}/")
            except OSError:
                return None
            if status != 200:
                return None
            bodies[i] = body
        return bodies

    bodies = wait_for(answers, timeout=60, what="the service on all three nodes")
    elapsed = time.monotonic() - t0
    assert bodies == {1: "swyn1", 2: "swyn2", 3: "swyn3"}, bodies
    tasks = service.tasks(filters={"desired-state": "running"})
    assert len(tasks) == 3
    assert {t["Spec"]["ContainerSpec"]["Image"] for t in tasks} == {base_image_ref}
    repository = base_image_ref.split("@")[0]
    for i in (2, 3):  # nodes 2 and 3 never had the image: they pulled it from the registry
        with cluster.client(i) as client:
            digests = [d for image in client.images.list() for d in image.attrs["RepoDigests"]]
        assert base_image_ref in digests, (i, digests, repository)
    cluster_report(f"3 replicas pulled by digest, all answering 200 in {elapsed:.1f}s")


@full_only  # about 15 s: the manager marks a node down after a few missed heartbeats
def test_a_killed_node_goes_down_and_comes_back(
    cluster: Cluster, manager: docker.DockerClient, cluster_report: Callable[[str], None]
) -> None:
    t0 = time.monotonic()
    cluster.kill_node(3)
    assert not cluster.node_running(3)
    wait_for(
        lambda: "swyn3" not in cluster.ready_nodes(),
        timeout=60,
        what="the manager to mark swyn3 down",
    )
    down = time.monotonic() - t0
    t1 = time.monotonic()
    cluster.restart_node(3)
    assert cluster.ready_nodes() == ["swyn1", "swyn2", "swyn3"]
    back = time.monotonic() - t1
    cluster_report(f"swyn3 marked down {down:.1f}s after the kill, Ready {back:.1f}s after restart")
