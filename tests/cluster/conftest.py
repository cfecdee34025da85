"""Fixtures of the multi-node suite: a real 3-node Docker Swarm and a registry.

The ``cluster`` fixture (tests/support/cluster.py) needs root, Docker, iproute2, util-linux
and docker-registry (``make provision`` installs them) and the main engine's base image. When
the machine cannot run it, every test here is skipped and the reason is printed. It is
package-scoped: one cluster for the whole suite (``make test-cluster`` runs only this
folder), removed right after its last test, so ``make test`` does not carry three idle
engines through the rest of the run. ``SHIPWAY_CLUSTER_TESTS=0`` skips the suite.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import docker
import pytest

from tests.support.cluster import Cluster, preflight

BASE_IMAGE = os.environ.get("SHIPWAY_BASE_IMAGE", "shipway/busybox:local")
_SKIP_REASON = pytest.StashKey[str | None]()


def _why_not() -> str | None:
    if os.environ.get("SHIPWAY_CLUSTER_TESTS", "1") == "0":
        return "SHIPWAY_CLUSTER_TESTS=0"
    reason = preflight()
    if reason:
        return reason
    try:
        main = docker.from_env(timeout=10)
        try:
            main.images.get(BASE_IMAGE)
        finally:
            main.close()
    except docker.errors.ImageNotFound:
        return f"the main Docker engine has no {BASE_IMAGE} (run `make provision`)"
    except Exception as exc:
        return f"the main Docker engine does not answer ({type(exc).__name__}: {exc})"
    return None


def _skip(request: pytest.FixtureRequest) -> None:
    """Skip when the machine cannot run a cluster, printing why once per run."""
    config = request.config
    if _SKIP_REASON not in config.stash:
        config.stash[_SKIP_REASON] = reason = _why_not()
        terminal = config.pluginmanager.get_plugin("terminalreporter")
        if reason and terminal is not None:
            terminal.write_line("")
            terminal.write_line(f"tests/cluster skipped: {reason}", yellow=True)
    reason = config.stash[_SKIP_REASON]
    if reason:
        pytest.skip(f"multi-node cluster unavailable: {reason}")


@pytest.fixture(scope="package")
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """3 dockerd nodes in a swarm (node 1 manager) and a registry; removed afterwards."""
    _skip(request)
    with Cluster(nodes=3) as running:
        terminal = request.config.pluginmanager.get_plugin("terminalreporter")
        if terminal is not None:
            terminal.write_line("")
            terminal.write_line(
                f"cluster: 3 nodes Ready and registry {running.registry_address} "
                f"in {running.timings['swarm']:.1f}s"
            )
        yield running


@pytest.fixture(scope="package")
def base_image_ref(cluster: Cluster) -> str:
    """The base image pushed to the cluster's registry: ``registry/repo@sha256:...``."""
    return cluster.load_image(BASE_IMAGE)
