"""Fixtures of the multi-node suite: a real 3-node Docker Swarm and a registry.

The ``cluster`` fixture (tests/support/cluster.py) needs root, Docker, iproute2, util-linux
and docker-registry (``make provision`` installs them) and the main engine's base image. When
the machine cannot run it, every test here is skipped and the reason is printed. It is
package-scoped: one cluster for the whole suite (``make test-cluster`` runs only this
folder), removed right after its last test, so ``make test`` does not carry three idle
engines through the rest of the run. ``SHIPWAY_CLUSTER_TESTS=0`` skips the suite;
``SHIPWAY_CLUSTER_SCALE`` (tests/cluster/scale.py) picks its size: ``smoke`` by default
(``make test``), ``full`` in ``make test-cluster``.

``three_managers`` is a second cluster (3 managers) for the manager-failover test. One
cluster runs per machine at a time (the harness's lock): the tests that use it run first
(``pytest_collection_modifyitems``), and their module-scoped cluster is removed before the
package's ``cluster`` starts; the fixture refuses to start while that one runs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator

import docker
import pytest

from tests.cluster.scale import FULL, SCALE
from tests.support.cluster import Cluster, preflight

BASE_IMAGE = os.environ.get("SHIPWAY_BASE_IMAGE", "shipway/busybox:local")
_SKIP_REASON = pytest.StashKey[str | None]()
_SUMMARY = pytest.StashKey[list[str]]()


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


_RUNNING: list[Cluster] = []  # the package's cluster while it runs


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests on a cluster of their own run before any test of the package's cluster."""
    items.sort(key=lambda item: "three_managers" not in getattr(item, "fixturenames", ()))


def _report(config: pytest.Config, line: str) -> None:
    """A line for the "cluster summary" section printed at the end of the run."""
    config.stash.setdefault(_SUMMARY, []).append(line)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the cluster's timings, or why it was skipped, whatever -q/-s say."""
    lines = terminalreporter.config.stash.get(_SUMMARY, [])
    if lines:
        terminalreporter.section("cluster summary")
        for line in lines:
            terminalreporter.write_line(line)


def _skip(request: pytest.FixtureRequest) -> None:
    """Skip when the machine cannot run a cluster, saying why once per run."""
    config = request.config
    if _SKIP_REASON not in config.stash:
        config.stash[_SKIP_REASON] = reason = _why_not()
        if reason:
            _report(config, f"tests/cluster skipped: {reason}")
    reason = config.stash[_SKIP_REASON]
    if reason:
        pytest.skip(f"multi-node cluster unavailable: {reason}")


@pytest.fixture(scope="package")
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """3 dockerd nodes in a swarm (node 1 manager) and a registry; removed afterwards."""
    _skip(request)
    # A 3 s dispatcher heartbeat (Swarm's default is 5 s), as README advises for shipway:
    # a dead node's replicas are rescheduled sooner.
    running = Cluster(nodes=3, heartbeat=3)
    _RUNNING.append(running)
    try:
        running.start()
        waited = running.timings.get("lock_wait", 0.0)
        _report(
            request.config,
            f"3 nodes Ready, registry {running.registry_address}: "
            f"{running.timings['swarm']:.1f}s after start"
            + (f" (after {waited:.0f}s waiting for another cluster)" if waited >= 1 else ""),
        )
        if not FULL:
            _report(
                request.config,
                f"SHIPWAY_CLUSTER_SCALE={SCALE}: long tests (node loss) skipped; "
                "make test-cluster runs them",
            )
        yield running
    finally:
        running.stop()
        _RUNNING.remove(running)
        if "stop" in running.timings:
            _report(
                request.config,
                f"cluster removed in {running.timings['stop']:.1f}s, nothing left "
                "(namespaces, links, cgroups, mounts, processes, files)",
            )


@pytest.fixture
def cluster_report(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """``report(line)``: a line (a timing) for the cluster summary at the end of the run."""
    return lambda line: _report(request.config, f"{request.node.name}: {line}")


@pytest.fixture(scope="package")
def base_image_ref(cluster: Cluster, request: pytest.FixtureRequest) -> str:
    """The base image pushed to the cluster's registry: ``registry/repo@sha256:...``."""
    t0 = time.monotonic()
    ref = cluster.load_image(BASE_IMAGE)
    _report(request.config, f"{BASE_IMAGE} into the registry in {time.monotonic() - t0:.1f}s")
    return ref


@pytest.fixture(scope="module")
def three_managers(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """3 nodes, all managers (Raft: the swarm survives one lost manager), a 1 s dispatcher
    heartbeat (a lost node is noticed in seconds); removed at the end of the module."""
    _skip(request)
    if _RUNNING:
        pytest.fail(
            "the package's cluster still runs and the machine runs one cluster at a time: "
            "tests on three_managers must run before the others (pytest_collection_modifyitems)"
        )
    running = Cluster(nodes=3, managers=3, heartbeat=1.0)
    try:
        running.start()
        _report(
            request.config,
            f"3 managers Ready: {running.timings['swarm']:.1f}s after start"
            + f" (after {running.timings.get('lock_wait', 0.0):.0f}s waiting for the lock)",
        )
        yield running
    finally:
        running.stop()
        if "stop" in running.timings:
            _report(request.config, f"3-manager cluster removed in {running.timings['stop']:.1f}s")
