"""docker-compose.yml brought up for real on this machine's engine with Debian's
docker-compose 1.29 (or `docker compose`): PostgreSQL, Redis, the registry, migrate, API,
router (HAProxy), worker and relay in containers of the offline images (`make images`);
then publish -> promote -> public URL -> v2 -> rollback through the published ports.
Everything is removed afterwards (replicas, containers, network, volumes), even on failure;
the images stay."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.processes import wait_until
from tests.support.services import free_port
from tests.test_compose import compose_cli
from tests.topology.flow import Api, publish_promote_rollback
from tests.topology.ports import free_port_range

pytestmark = [pytest.mark.topology, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
UP_TIMEOUT = 240
RELEASE = "label=shipway.release"


class Compose:
    """One docker-compose project of docker-compose.yml with its own ports and network."""

    def __init__(self, argv: list[str]) -> None:
        self.project = f"swtopo{secrets.token_hex(3)}"
        self.argv = [*argv, "-f", str(ROOT / "docker-compose.yml"), "-p", self.project]
        self.api_port = free_port()
        self.registry_port = free_port()
        self.deployments: list[str] = []
        low = free_port_range(5)
        self.routes = f"{low}-{low + 4}"
        self.env = {
            **os.environ,
            "SHIPWAY_NETWORK": self.project,
            "API_BIND": "127.0.0.1",
            "API_PORT": str(self.api_port),
            "ROUTES_BIND": "127.0.0.1",
            "SHIPWAY_ROUTER_PORT_RANGE": self.routes,
            "SHIPWAY_ROUTER_PUBLIC_HOST": "127.0.0.1",
            "REGISTRY_PORT": str(self.registry_port),
            "SHIPWAY_PUBLIC_URL": f"http://127.0.0.1:{self.api_port}",
        }

    def run(self, *args: str, timeout: float = 300, check: bool = True) -> str:
        done = subprocess.run(
            [*self.argv, *args],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"{args} failed ({done.returncode}): {done.stderr[-3000:]}")
        return done.stdout

    def down(self) -> None:
        """Replicas first (attached to the project's network), then the whole project."""
        replicas = subprocess.run(
            ["docker", "ps", "-aq", "--filter", f"network={self.project}"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        ours = set(self.run("ps", "-q", check=False).split())
        strays = [c for c in replicas if not any(o.startswith(c) for o in ours)]
        if strays:
            subprocess.run(["docker", "rm", "-f", *strays], capture_output=True, check=False)
        self.run("down", "-v", "--remove-orphans", "--timeout", "10", check=False)
        images = [f"shipway/{d}" for d in self.deployments]
        images += [f"127.0.0.1:{self.registry_port}/shipway/{d}" for d in self.deployments]
        for repository in images:
            tags = subprocess.run(
                ["docker", "images", "-q", "--filter", f"reference={repository}"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.split()
            if tags:
                subprocess.run(["docker", "rmi", "-f", *tags], capture_output=True, check=False)

    def logs(self) -> str:
        return self.run("logs", "--no-color", "--tail", "40", check=False)[-12000:]


@pytest.fixture
def compose() -> Iterator[Compose]:
    argv = compose_cli()
    assert argv is not None, "neither `docker compose` nor `docker-compose` is installed"
    project = Compose(argv)
    try:
        yield project
    except BaseException:
        print(project.logs())
        raise
    finally:
        project.down()
        left = subprocess.run(
            [
                "docker",
                "ps",
                "-aq",
                "--filter",
                f"label=com.docker.compose.project={project.project}",
            ],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        assert not left, f"containers left behind: {left}"


def test_compose_topology_publishes_promotes_and_rolls_back(
    compose: Compose, topology_report: Callable[[str], None]
) -> None:
    started = time.monotonic()
    compose.run("up", "-d", "--no-build", timeout=UP_TIMEOUT)
    api_url = f"http://127.0.0.1:{compose.api_port}"

    def ready() -> bool:
        try:
            return httpx.get(f"{api_url}/readyz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(ready, timeout=UP_TIMEOUT, interval=1, message=compose.logs)
    up = time.monotonic() - started
    created = compose.run(
        "exec", "-T", "api", "shipway", "tokens", "create",
        "--workspace", "acme", "--scope", "deployments:write", "--json",
    )  # fmt: skip
    token = json.loads(created.strip().splitlines()[-1])["token"]
    api = Api(api_url, token)
    deployment, url = publish_promote_rollback(
        api, report=topology_report, created=compose.deployments.append
    )
    assert url.startswith("http://127.0.0.1:")
    # The versions went through the registry service, the replicas joined the network.
    catalog = httpx.get(f"http://127.0.0.1:{compose.registry_port}/v2/_catalog", timeout=10)
    assert f"shipway/{deployment}" in catalog.json()["repositories"]
    replicas = subprocess.run(
        ["docker", "ps", "-q", "--filter", f"network={compose.project}", "--filter", RELEASE],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert replicas, "no replica on the project's network"
    low, high = (int(p) for p in compose.routes.split("-"))
    assert low <= int(url.rsplit(":", 1)[1]) <= high  # a port the router service publishes
    topology_report(
        f"compose up {up:.1f}s, whole test {time.monotonic() - started:.1f}s "
        f"(project {compose.project}, routes {compose.routes})"
    )
