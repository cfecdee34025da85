"""The raw Swarm baselines of ``bench/swarm.py``: what any tool pays on the same cluster.

- ``raw_build_push``: ``docker build`` of shipway's static context on the manager's
  engine (the files already on disk), then ``docker push`` to the cluster's registry;
- ``raw_service``: ``docker service create`` of an image by digest with 3 replicas,
  a host-mode published port and one replica per node, until each node answers
  ``GET /healthz`` 200 on that port; the service is then removed (untimed) and its
  containers awaited gone on every node.

Both go through the Docker SDK (the API calls the ``docker`` CLI makes, without its
progress polling), as the other benchmarks' raw floors do.
"""

from __future__ import annotations

import random
import time
from concurrent.futures import ThreadPoolExecutor

import docker
import httpx
from docker.types import (
    ContainerSpec,
    EndpointSpec,
    Placement,
    RestartPolicy,
    ServiceMode,
    TaskTemplate,
)

from bench.publish import raw_build
from tests.support.cluster import Cluster, wait_for

RAW_LABEL = "shipway.bench.raw"
REPLICAS = 3


def push(engine: docker.DockerClient, reference: str, repository: str, tag: str) -> str:
    """``docker tag`` + ``docker push``; the pushed ``repository@sha256:…``."""
    engine.api.tag(reference, repository, tag)
    digest = None
    for line in engine.api.push(repository, tag=tag, stream=True, decode=True):
        if line.get("error"):
            raise RuntimeError(f"push of {repository}:{tag} failed: {line['error']}")
        digest = (line.get("aux") or {}).get("Digest") or digest
    if not digest:
        raise RuntimeError(f"push of {repository}:{tag} named no digest")
    return f"{repository}@{digest}"


def raw_build_push(
    engine: docker.DockerClient, files: dict[str, bytes], repository: str, tag: str
) -> tuple[float, float, str]:
    """Seconds of the raw build and of its push (the files are on disk before the clock
    starts); and the pushed reference by digest."""
    build_s, local_tag = raw_build(engine, files)
    started = time.perf_counter()
    reference = push(engine, local_tag, repository, tag)
    return build_s, time.perf_counter() - started, reference


def pull_everywhere(cluster: Cluster, reference: str) -> None:
    """Pull ``reference`` on every node (untimed: both sides then start from a pulled image)."""
    for index in range(1, cluster.nodes + 1):
        with cluster.client(index, timeout=120) as client:
            client.api.pull(reference)


def raw_service(cluster: Cluster, reference: str, port: int = 8080) -> float:
    """Seconds from ``docker service create`` (3 replicas, host-mode port, spread one per
    node) until every node answers ``/healthz`` 200 on the published port."""
    published = random.randint(20000, 29999)  # below the engines' ephemeral port range
    template = TaskTemplate(
        container_spec=ContainerSpec(
            image=reference, init=True, stop_grace_period=10 * 1_000_000_000
        ),
        restart_policy=RestartPolicy(condition="any", delay=1_000_000_000, max_attempts=0),
        placement=Placement(preferences=[("spread", "node.id")], maxreplicas=1),
    )
    endpoint = EndpointSpec(
        ports=[
            {
                "Protocol": "tcp",
                "TargetPort": port,
                "PublishedPort": published,
                "PublishMode": "host",
            }
        ]
    )
    # One client, made before the clock starts, without keep-alive: as shipway probes.
    # A short connect timeout: while a node sets the published port up, a SYN can be
    # dropped, and a 1 s timeout then charged the floor a full second per node.
    poll = httpx.Client(
        timeout=httpx.Timeout(1.0, connect=0.05),
        limits=httpx.Limits(max_keepalive_connections=0),
    )

    def answered(index: int) -> None:
        url = f"http://{cluster.node_address(index)}:{published}/healthz"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if poll.get(url).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.01)
        raise RuntimeError(f"{url} never answered 200")

    with cluster.manager_client() as manager, poll:
        started = time.perf_counter()
        created = manager.api.create_service(
            template,
            name=f"swb-raw-{published}",
            labels={RAW_LABEL: "1"},
            mode=ServiceMode("replicated", replicas=REPLICAS),
            endpoint_spec=endpoint,
        )
        try:
            with ThreadPoolExecutor(cluster.nodes) as pool:
                list(pool.map(answered, range(1, cluster.nodes + 1)))
            elapsed = time.perf_counter() - started
        finally:
            manager.api.remove_service(created["ID"])
    wait_gone(cluster, f"com.docker.swarm.service.id={created['ID']}")
    return elapsed


def remove_services(cluster: Cluster, label: str) -> None:
    """Remove every service carrying ``label`` and wait until their containers are gone."""
    with cluster.manager_client() as manager:
        for service in manager.api.services(filters={"label": [label]}):
            manager.api.remove_service(service["ID"])
    wait_gone(cluster, label)


def wait_gone(cluster: Cluster, label: str) -> None:
    """Wait until no running node has a container labelled ``label``."""

    def gone() -> bool:
        for index in range(1, cluster.nodes + 1):
            if not cluster.node_running(index):
                continue
            with cluster.client(index) as client:
                if client.api.containers(all=True, filters={"label": label}):
                    return False
        return True

    wait_for(gone, timeout=60, what=f"containers labelled {label} gone", interval=0.2)


def raw_watch_service(cluster: Cluster, reference: str, port: int = 8080) -> str:
    """A raw 3-replica service (spread, host-mode port each node picks) to watch through a
    node loss beside shipway's; its id once its tasks run."""
    template = TaskTemplate(
        container_spec=ContainerSpec(
            image=reference, init=True, stop_grace_period=10 * 1_000_000_000
        ),
        restart_policy=RestartPolicy(condition="any", delay=1_000_000_000, max_attempts=0),
        placement=Placement(preferences=[("spread", "node.id")]),
    )
    endpoint = EndpointSpec(ports=[{"Protocol": "tcp", "TargetPort": port, "PublishMode": "host"}])
    with cluster.manager_client() as manager:
        created = manager.api.create_service(
            template,
            name=f"swb-raw-watch-{random.randint(0, 99999)}",
            labels={RAW_LABEL: "watch"},
            mode=ServiceMode("replicated", replicas=REPLICAS),
            endpoint_spec=endpoint,
        )
    service_id = str(created["ID"])
    wait_for(
        lambda: len(running_nodes(cluster, service_id)) == REPLICAS,
        timeout=60,
        what="the raw watch service running",
    )
    return service_id


def running_nodes(cluster: Cluster, service_id: str) -> list[str]:
    """The node ids of the service's running tasks (one entry per task)."""
    with cluster.manager_client() as manager:
        tasks = manager.api.tasks(filters={"service": service_id, "desired-state": "running"})
    return [
        str(task.get("NodeID"))
        for task in tasks
        if (task.get("Status") or {}).get("State") == "running"
    ]


def node_id(cluster: Cluster, index: int) -> str:
    """The swarm's id of node ``index``."""
    with cluster.manager_client() as manager:
        for node in manager.nodes.list():
            if node.attrs["Description"]["Hostname"] == cluster.node(index).name:
                return str(node.id)
    raise RuntimeError(f"node {index} is not in the swarm")


def raw_services_per_replica(cluster: Cluster, reference: str, port: int = 8080) -> float:
    """Shipway's layout done raw, for information: 3 one-task services created in parallel,
    a host-mode port each node picks (read from the task), until each answers 200."""
    with cluster.manager_client() as manager:
        addresses = {str(n.id): n.attrs["Status"]["Addr"] for n in manager.nodes.list()}
        poll = httpx.Client(
            timeout=httpx.Timeout(1.0, connect=0.05),
            limits=httpx.Limits(max_keepalive_connections=0),
        )
        tag = random.randint(0, 99999)

        def one(index: int) -> str:
            created = manager.api.create_service(
                TaskTemplate(
                    container_spec=ContainerSpec(
                        image=reference, init=True, stop_grace_period=10 * 1_000_000_000
                    ),
                    restart_policy=RestartPolicy(
                        condition="any", delay=1_000_000_000, max_attempts=0
                    ),
                    placement=Placement(preferences=[("spread", "node.id")]),
                ),
                name=f"swb-raw-{tag}-{index}",
                labels={RAW_LABEL: "per-replica"},
                mode=ServiceMode("replicated", replicas=1),
                endpoint_spec=EndpointSpec(
                    ports=[{"Protocol": "tcp", "TargetPort": port, "PublishMode": "host"}]
                ),
            )
            deadline = time.monotonic() + 120
            url = None
            while url is None and time.monotonic() < deadline:
                for task in manager.api.tasks(filters={"service": created["ID"]}):
                    status = task.get("Status") or {}
                    ports = (status.get("PortStatus") or {}).get("Ports") or []
                    if status.get("State") == "running" and ports:
                        address = addresses[str(task["NodeID"])]
                        url = f"http://{address}:{ports[0]['PublishedPort']}/healthz"
                if url is None:
                    time.sleep(0.05)
            while url is not None and time.monotonic() < deadline:
                try:
                    if poll.get(url).status_code == 200:
                        return str(created["ID"])
                except httpx.HTTPError:
                    pass
                time.sleep(0.01)
            raise RuntimeError(f"raw service {created['ID']} never answered")

        with poll:
            started = time.perf_counter()
            with ThreadPoolExecutor(REPLICAS) as pool:
                list(pool.map(one, range(REPLICAS)))
            elapsed = time.perf_counter() - started
    remove_services(cluster, f"{RAW_LABEL}=per-replica")
    return elapsed
