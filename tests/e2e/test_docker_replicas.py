"""DockerRuntime.run_replica on the real engine: create-first, reuse by name, clean failures.

A retried job calls run_replica again for the same names: a running container is
reused, a stopped one replaced, and never two of one name exist. A missing image
or a request the engine refuses leaves no container behind.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import httpx
import pytest

from shipway.runtime.base import Endpoint, ReplicaSpec, RuntimeFailure
from shipway.runtime.docker_runtime import DockerRuntime
from tests.support.processes import wait_until

pytestmark = pytest.mark.e2e

LABEL = "shipway-test.replica-run"


@dataclass
class Engine:
    """The real engine's runtime and this test's label value (every container carries it)."""

    runtime: DockerRuntime
    run: str

    def spec(self, image: str, **extra: Any) -> ReplicaSpec:
        name = f"sw-test-{self.run}-0"
        return ReplicaSpec(
            image=image, name=name, labels={LABEL: self.run}, container_port=8080, **extra
        )

    def containers(self) -> list[str]:
        return [r.id for r in self.runtime.replicas({LABEL: self.run})]


@pytest.fixture
def engine() -> Iterator[Engine]:
    engine = Engine(DockerRuntime(), secrets.token_hex(4))
    yield engine
    for container_id in engine.containers():
        engine.runtime.remove_replica(container_id)


def test_a_replica_runs_publishes_its_port_on_loopback_and_answers(
    engine: Engine, static_image: str
) -> None:
    replica = engine.runtime.run_replica(
        engine.spec(static_image, env={"GREETING": "hi"}, memory_mb=64, cpus=0.5)
    )
    assert replica.running and replica.host_port
    # The runtime reports where the replica is reached: the address its port is bound on.
    assert replica.endpoint == Endpoint(address="127.0.0.1", port=replica.host_port)
    wait_until(
        lambda: _answers(replica.host_port),
        timeout=20,
        message=f"replica never answered on {replica.host_port}",
    )
    attrs = engine.runtime.client.api.inspect_container(replica.id)
    host = attrs["HostConfig"]
    assert host["Init"] is True and host["RestartPolicy"]["Name"] == "no"
    assert host["Memory"] == 64 * 1024 * 1024 and host["NanoCpus"] == 500_000_000
    assert host["PortBindings"]["8080/tcp"][0]["HostIp"] == "127.0.0.1"
    assert "GREETING=hi" in attrs["Config"]["Env"]
    assert attrs["Config"]["Labels"][LABEL] == engine.run


def test_a_second_run_reuses_the_running_container_and_replaces_a_stopped_one(
    engine: Engine, static_image: str
) -> None:
    first = engine.runtime.run_replica(engine.spec(static_image))
    again = engine.runtime.run_replica(engine.spec(static_image))
    assert again.id == first.id
    engine.runtime.stop_replica(first.id, timeout_seconds=0)
    replaced = engine.runtime.run_replica(engine.spec(static_image))
    assert replaced.id != first.id and replaced.running
    assert engine.runtime.inspect_replica(first.id) is None
    assert engine.containers() == [replaced.id]


def test_a_missing_image_fails_as_image_pull_failed_and_leaves_nothing(
    engine: Engine,
) -> None:
    with pytest.raises(RuntimeFailure) as failure:
        engine.runtime.run_replica(engine.spec(f"shipway-test/missing:{secrets.token_hex(3)}"))
    assert failure.value.reason == "image_pull_failed"
    assert engine.containers() == []


def test_a_request_the_engine_refuses_fails_as_scheduling_failed_and_leaves_nothing(
    engine: Engine, static_image: str
) -> None:
    cpus = (os.cpu_count() or 1) + 1  # more CPUs than the host has
    with pytest.raises(RuntimeFailure) as failure:
        engine.runtime.run_replica(engine.spec(static_image, cpus=float(cpus)))
    assert failure.value.reason == "scheduling_failed"
    assert engine.spec(static_image).name in failure.value.message
    assert "CPU" in failure.value.message
    assert engine.containers() == []


def test_replicas_by_label_lists_many_releases_at_once_as_an_inspect_would(
    engine: Engine, static_image: str
) -> None:
    """The health monitor's lookup: one listing for every release asked. A running replica
    read from the listing has the inspect's id, name, labels, status and endpoint; a
    stopped one is inspected (its exit code); a value with nothing reads empty."""
    group = f"shipway-test.group-{engine.run}"
    for value, count in (("a", 2), ("b", 1), ("other", 1)):
        for n in range(count):
            labels = {LABEL: engine.run, group: value}
            name = f"sw-test-{engine.run}-{value}-{n}"
            engine.runtime.run_replica(
                ReplicaSpec(image=static_image, name=name, labels=labels, container_port=8080)
            )
    stopped = engine.runtime.replicas({group: "b"})[0]
    engine.runtime.stop_replica(stopped.id, timeout_seconds=0)

    found = engine.runtime.replicas_by_label(group, ["a", "b", "none"])

    assert set(found) == {"a", "b", "none"} and found["none"] == []
    assert len(found["a"]) == 2 and all(r.running for r in found["a"])
    for listed in found["a"]:
        inspected = engine.runtime.inspect_replica(listed.id)
        assert inspected is not None
        for fact in ("id", "name", "labels", "status", "host_port", "address", "endpoint"):
            assert getattr(listed, fact) == getattr(inspected, fact), fact
    [exited] = found["b"]
    assert exited.id == stopped.id and not exited.running and exited.exit_code is not None


def _answers(port: int | None) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_replicas_by_label_on_the_replica_network_as_an_inspect_would(
    engine: Engine, static_image: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docker-compose.yml's way (SHIPWAY_REPLICA_NETWORK): replicas are reached at their
    address on that network and their container port, nothing published. The listing has
    both as the inspect does."""
    from shipway.config import get_settings

    network = engine.runtime.client.networks.create(f"sw-test-{engine.run}")
    monkeypatch.setenv("SHIPWAY_REPLICA_NETWORK", network.name)
    get_settings.cache_clear()
    try:
        for n in range(2):
            name = f"sw-test-{engine.run}-net{n}"
            engine.runtime.run_replica(replace(engine.spec(static_image), name=name))

        [listed] = engine.runtime.replicas_by_label(LABEL, [engine.run]).values()

        assert len(listed) == 2
        for replica in listed:
            inspected = engine.runtime.inspect_replica(replica.id)
            assert inspected is not None and inspected.endpoint is not None
            assert inspected.endpoint.port == 8080
            assert replica.endpoint == inspected.endpoint
    finally:
        for container_id in engine.containers():
            engine.runtime.remove_replica(container_id)
        network.remove()
        monkeypatch.delenv("SHIPWAY_REPLICA_NETWORK")
        get_settings.cache_clear()
