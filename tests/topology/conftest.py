"""Fixtures of the topology suite: shipway's own production topologies, brought up for real.

These tests start docker-compose.yml (tests/topology) and deploy/stack.yml on the cluster
harness (tests/cluster/test_stack_deploy.py) from the images of ``make images``; each takes
minutes, so they run in ``make test-topology`` (SHIPWAY_TOPOLOGY_TESTS=1) only. Elsewhere
(``make test``) they are skipped, and the reason is printed in a "topology summary" section,
with each bring-up's timings when they ran.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable

import pytest

IMAGES = (
    os.environ.get("SHIPWAY_IMAGE", "shipway:local"),
    os.environ.get("SHIPWAY_SUPPORT_IMAGE", "shipway/support:local"),
    os.environ.get("SHIPWAY_BASE_IMAGE", "shipway/busybox:local"),
)
_SUMMARY = pytest.StashKey[list[str]]()


def topology_skip_reason() -> str | None:
    """Why the topology tests do not run here (None: they do)."""
    if os.environ.get("SHIPWAY_TOPOLOGY_TESTS") != "1":
        return "topology bring-ups run in `make test-topology` only (SHIPWAY_TOPOLOGY_TESTS=1)"
    return None


def missing_images() -> list[str]:
    """Which of the topology's images the local engine lacks (`make images` builds them)."""
    return [
        image
        for image in IMAGES
        if subprocess.run(
            ["docker", "image", "inspect", image], capture_output=True, check=False
        ).returncode
        != 0
    ]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    lines = terminalreporter.config.stash.get(_SUMMARY, [])
    if lines:
        terminalreporter.section("topology summary")
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture
def topology_report(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Adds a line to the "topology summary" section (and prints it)."""

    def report(line: str) -> None:
        line = f"{request.node.name}: {line}"
        print(line)
        request.config.stash.setdefault(_SUMMARY, []).append(line)

    return report


@pytest.fixture(autouse=True)
def _topology_enabled(topology_report: Callable[[str], None]) -> None:
    reason = topology_skip_reason()
    if reason:
        topology_report(f"skipped: {reason}")
        pytest.skip(reason)
    missing = missing_images()
    assert not missing, f"images missing: {missing} (run `make images`)"
