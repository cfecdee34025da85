"""deploy/stack.yml deployed for real with `docker stack deploy` on the project's 3-node
swarm harness (tests/support/cluster.py): shipway's images go to the harness registry and
the stack references them by digest; the control plane runs on node 1 (labelled
shipway.state=true) on the host network; the worker creates replicas through node 1's
Docker socket, spread over the nodes; then publish -> promote (3 replicas) -> public
URL on node 1's address -> v2 -> rollback. The stack, the replicas and the cluster are
removed afterwards, even on failure."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.cluster import Cluster, preflight
from tests.support.processes import wait_until
from tests.topology.flow import Api, publish_promote_rollback

# The stack test may wait for the machine's cluster lock (other runs) before it starts.
pytestmark = [pytest.mark.topology, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[2]
STACK = "swstack"
IMAGES = {
    "SHIPWAY_IMAGE": os.environ.get("SHIPWAY_IMAGE", "shipway:local"),
    "SUPPORT_IMAGE": os.environ.get("SHIPWAY_SUPPORT_IMAGE", "shipway/support:local"),
}
BASE_IMAGE = os.environ.get("SHIPWAY_BASE_IMAGE", "shipway/busybox:local")
UP_TIMEOUT = 240


class Swarm:
    """The docker CLI pointed at node 1 (the manager), with the stack's variables."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.env = {**os.environ, "DOCKER_HOST": cluster.node_docker_host(1)}

    def run(self, *args: str, timeout: float = 120, check: bool = True) -> str:
        done = subprocess.run(
            ["docker", *args],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"docker {args} failed ({done.returncode}): {done.stderr}")
        return done.stdout

    def task_states(self, service: str) -> list[str]:
        out = self.run("service", "ps", f"{STACK}_{service}", "--format", "{{.CurrentState}}")
        return out.splitlines()

    def logs(self) -> str:
        lines = []
        for service in ("migrate", "api", "router", "worker", "relay", "postgres", "redis"):
            lines.append(f"--- {service}: {self.task_states(service)[:3]}")
            lines.append(self.run("service", "logs", "--tail", "15", f"{STACK}_{service}",
                                  check=False, timeout=30))  # fmt: skip
        return "\n".join(lines)[-15000:]

    def down(self) -> None:
        """The stack, then the replica services the worker created."""
        self.run("stack", "rm", STACK, check=False)
        replicas = self.run("service", "ls", "-q", "--filter", "label=shipway.release", check=False)
        if replicas.split():
            self.run("service", "rm", *replicas.split(), check=False)


@pytest.fixture
def swarm(topology_report: Callable[[str], None]) -> Iterator[Swarm]:
    reason = preflight()
    if reason:
        topology_report(f"skipped: {reason}")
        pytest.skip(reason)
    with Cluster(heartbeat=3.0) as cluster:
        topology_report(
            f"cluster Ready in {cluster.timings['swarm']:.1f}s "
            f"(after {cluster.timings.get('lock_wait', 0.0):.0f}s waiting for the lock)"
        )
        swarm = Swarm(cluster)
        try:
            yield swarm
        except BaseException:
            print(swarm.logs())
            raise
        finally:
            swarm.down()


def test_stack_deploy_publishes_promotes_over_three_nodes_and_rolls_back(
    swarm: Swarm, topology_report: Callable[[str], None]
) -> None:
    cluster = swarm.cluster
    started = time.monotonic()
    for variable, image in IMAGES.items():
        swarm.env[variable] = cluster.load_image(image)
    cluster.load_image(BASE_IMAGE)  # also leaves it on node 1, whose engine builds
    pushed = time.monotonic() - started
    node_id = swarm.run("info", "--format", "{{.Swarm.NodeID}}").strip()
    swarm.run("node", "update", "--label-add", "shipway.state=true", node_id)
    swarm.env.update(
        SHIPWAY_REGISTRY=cluster.registry_address,
        SHIPWAY_ROUTER_PUBLIC_HOST=cluster.node_address(1),
        SHIPWAY_DOCKER_SOCKET=str(cluster.node(1).socket),
        SHIPWAY_BASE_IMAGE=BASE_IMAGE,
        SHIPWAY_ROUTER_PORT_RANGE="20000-20019",
    )
    swarm.run("stack", "deploy", "-c", "deploy/stack.yml", STACK)
    api_url = f"http://{cluster.node_address(1)}:8470"

    def ready() -> bool:
        if not any(s.startswith("Complete") for s in swarm.task_states("migrate")):
            return False
        try:
            return httpx.get(f"{api_url}/readyz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(ready, timeout=UP_TIMEOUT, interval=1, message=swarm.logs)
    up = time.monotonic() - started - pushed
    api_task = swarm.run(
        "ps", "-q", "--filter", f"label=com.docker.swarm.service.name={STACK}_api"
    ).split()[0]
    created = swarm.run(
        "exec", api_task, "shipway", "tokens", "create",
        "--workspace", "acme", "--scope", "deployments:write", "--json",
    )  # fmt: skip
    api = Api(api_url, json.loads(created.strip().splitlines()[-1])["token"])
    nodes: set[str] = set()

    def spread(deployment: str) -> None:
        services = swarm.run(
            "service", "ls", "-q", "--filter", f"label=shipway.deployment={deployment}"
        )
        for service in services.split():
            running = swarm.run(
                "service", "ps", service, "--filter", "desired-state=running",
                "--format", "{{.Node}}",
            )  # fmt: skip
            nodes.update(running.split())

    deployment, url = publish_promote_rollback(
        api, replicas=3, promoted=spread, report=topology_report
    )
    assert url.startswith(f"http://{cluster.node_address(1)}:")
    # Swarm spreads by task count and node 1 already runs the stack's seven services, so the
    # replicas go mostly to nodes 2 and 3: HAProxy on node 1 reaches them at node addresses.
    assert len(nodes) >= 2 and nodes != {"swyn1"}, f"v1's 3 replicas ran on {nodes}"
    topology_report(f"v1's 3 replicas ran on {sorted(nodes)}")
    topology_report(
        f"images into the registry {pushed:.1f}s, stack up {up:.1f}s, "
        f"whole test {time.monotonic() - started:.1f}s (deployment {deployment})"
    )
