"""SwarmRuntime on a real 3-node swarm: replicas spread over the nodes, each reached at
its node's address and host-mode port; stop, start again, logs, remove; a missing image
is a classified failure."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from functools import partial

import docker
import httpx
import pytest

from shipway.runtime.base import ReplicaSpec, RuntimeFailure
from shipway.runtime.hardening import hardening_for
from shipway.runtime.swarm_runtime import SwarmRuntime
from tests.support.cluster import Cluster
from tests.support.processes import wait_until

pytestmark = pytest.mark.cluster


@pytest.fixture
def runtime(cluster: Cluster) -> Iterator[SwarmRuntime]:
    client = docker.DockerClient(base_url=cluster.manager_docker_host(), timeout=60)
    runtime = SwarmRuntime(client)
    yield runtime
    for service in client.api.services(filters={"label": ["shipway.test"]}):
        runtime.remove_replica(service["ID"])
    client.close()


def spec(image: str, run: str, i: int) -> ReplicaSpec:
    return ReplicaSpec(
        image=image,
        name=f"sw-{run}-{i}",
        labels={"shipway.test": run, "shipway.release": run},
        container_port=8080,
        command=[
            "sh",
            "-c",
            f"echo replica {i} && mkdir -p /w && echo r{i} > /w/index.html"
            " && exec httpd -f -p 8080 -h /w",
        ],
        memory_mb=32,
        cpus=0.25,
    )


def answer(url: str) -> str | None:
    try:
        response = httpx.get(url, timeout=2)
    except httpx.HTTPError:
        return None
    return response.text.strip() if response.status_code == 200 else None


def test_replicas_spread_over_the_nodes_and_answer_at_their_endpoints(
    cluster: Cluster, runtime: SwarmRuntime, base_image_ref: str
) -> None:
    run = secrets.token_hex(3)
    replicas = [runtime.run_replica(spec(base_image_ref, run, i)) for i in range(3)]
    addresses = {r.endpoint.address for r in replicas if r.endpoint}
    assert addresses == {cluster.node_address(i) for i in (1, 2, 3)}, replicas
    for i, replica in enumerate(replicas):
        assert replica.running and replica.endpoint is not None
        url = replica.endpoint.url("/")
        body = wait_until(partial(answer, url), timeout=20, message=f"replica {i} at {url}")
        assert body == f"r{i}"
    # Idempotent by name: a second run of the same spec finds the running replica.
    again = runtime.run_replica(spec(base_image_ref, run, 0))
    assert again.id == replicas[0].id and again.endpoint == replicas[0].endpoint
    listed = runtime.replicas({"shipway.release": run})
    assert sorted(r.name for r in listed) == [f"sw-{run}-{i}" for i in range(3)]
    # The health monitor's lookup of many releases at once agrees with it.
    by_label = runtime.replicas_by_label("shipway.release", [run, "none"])
    assert by_label["none"] == [] and sorted(by_label[run], key=lambda r: r.name) == sorted(
        listed, key=lambda r: r.name
    )
    # Hardening the task template asked for: init, limits, labels, restart policy.
    service = runtime.client.api.inspect_service(replicas[0].id)
    template = service["Spec"]["TaskTemplate"]
    assert template["ContainerSpec"]["Init"] is True
    assert template["Resources"]["Limits"]["MemoryBytes"] == 32 << 20
    assert template["RestartPolicy"]["Condition"] == "any"
    assert wait_until(lambda: runtime.logs(replicas[0].id), timeout=20, message="logs")[
        -1
    ].endswith("replica 0")


def test_stop_start_and_remove(runtime: SwarmRuntime, base_image_ref: str) -> None:
    run = secrets.token_hex(3)
    replica = runtime.run_replica(spec(base_image_ref, run, 0))
    runtime.stop_replica(replica.id, timeout_seconds=5)
    stopped = runtime.inspect_replica(replica.id)
    assert stopped is not None and not stopped.running and stopped.endpoint is None
    assert [r.id for r in runtime.stopped_replicas("shipway.test")] == [replica.id]
    started = runtime.start_replica(replica.id)
    assert started is not None and started.running and started.endpoint is not None
    url = started.endpoint.url("/")
    assert wait_until(partial(answer, url), timeout=20, message="restarted") == "r0"
    runtime.remove_replica(replica.id)
    runtime.remove_replica(replica.id)  # gone already: no error
    assert runtime.inspect_replica(replica.id) is None


def test_an_image_no_node_can_pull_is_a_classified_failure(
    cluster: Cluster, runtime: SwarmRuntime
) -> None:
    run = secrets.token_hex(3)
    missing = f"{cluster.registry_address}/nothing@sha256:{'0' * 64}"
    with pytest.raises(RuntimeFailure) as failure:
        runtime.run_replica(spec(missing, run, 0))
    assert failure.value.reason == "image_pull_failed", failure.value.message
    assert runtime.replicas({"shipway.release": run}) == []  # nothing left behind


def test_a_static_replica_is_hardened_on_the_swarm(
    cluster: Cluster, runtime: SwarmRuntime, base_image_ref: str
) -> None:
    """runtime.hardening's static profile on a service: nobody, no capabilities, read-only
    root with a tmpfs /tmp, a pids limit; the task still serves. (No no-new-privileges: a
    service cannot ask for it before API 1.44, see hardening.swarm_confinement.)"""
    run = secrets.token_hex(3)
    replica = runtime.run_replica(
        ReplicaSpec(
            image=base_image_ref,
            name=f"sw-{run}-0",
            labels={"shipway.test": run, "shipway.release": run},
            container_port=8080,
            command=["sh", "-c", "echo hard > /tmp/index.html && exec httpd -f -p 8080 -h /tmp"],
            memory_mb=32,
            pids_limit=64,
            hardening=hardening_for("static"),
        )
    )
    assert replica.endpoint is not None
    url = replica.endpoint.url("/")
    assert wait_until(partial(answer, url), timeout=30, message=f"replica at {url}") == "hard"
    container_spec = runtime.client.api.inspect_service(replica.id)["Spec"]["TaskTemplate"]
    spec_ = container_spec["ContainerSpec"]
    assert spec_["User"] == "65534:65534" and spec_["ReadOnly"] is True
    assert spec_["CapabilityDrop"] == ["ALL"] and not spec_.get("CapabilityAdd")
    assert [(m["Target"], m["Type"]) for m in spec_["Mounts"]] == [("/tmp", "tmpfs")]
    # What the node's engine made of it: docker inspect of the task's container.
    found = []
    for i in (1, 2, 3):
        with cluster.client(i) as client:
            found += [
                c.attrs
                for c in client.containers.list(
                    filters={"label": f"com.docker.swarm.service.id={replica.id}"}
                )
            ]
    (attrs,) = found
    host = attrs["HostConfig"]
    assert attrs["Config"]["User"] == "65534:65534"
    assert host["ReadonlyRootfs"] is True and host["CapDrop"] == ["ALL"]
    assert host["PidsLimit"] == 64 and host["Memory"] == 32 << 20
