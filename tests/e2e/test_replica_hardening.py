"""Replica hardening on one Docker engine, checked with ``docker inspect``.

A static site runs as nobody with every capability dropped, a read-only root with a
tmpfs /tmp, no-new-privileges, the default pids/memory/CPU limits, and still serves; a
container app keeps its image's user and the few capabilities it may need; with
hardening off, nothing is confined but the limits stay.
"""

from __future__ import annotations

from typing import Any

import pytest

from shipway.config import get_settings
from shipway.runtime.hardening import CONTAINER_CAPABILITIES, hardening_for, limits_for
from tests.e2e.test_docker_replicas import Engine, _answers, engine
from tests.support.processes import wait_until

pytestmark = pytest.mark.e2e
__all__ = ["engine"]  # the fixture


def _run(engine: Engine, image: str, kind: str) -> tuple[dict[str, Any], int]:
    limits = limits_for(None)
    replica = engine.runtime.run_replica(
        engine.spec(
            image,
            memory_mb=limits.memory_mb,
            cpus=limits.cpus,
            pids_limit=limits.pids,
            hardening=hardening_for(kind),
        )
    )
    assert replica.running and replica.host_port
    port = replica.host_port
    wait_until(lambda: _answers(port), timeout=20, message=f"{kind} replica never answered")
    return engine.runtime.client.api.inspect_container(replica.id), port


def test_a_static_replica_is_confined_and_serves(engine: Engine, static_image: str) -> None:
    attrs, _ = _run(engine, static_image, "static")
    host, config = attrs["HostConfig"], attrs["Config"]
    assert config["User"] == "65534:65534"
    assert host["CapDrop"] == ["ALL"] and not host["CapAdd"]
    assert host["SecurityOpt"] == ["no-new-privileges:true"]
    assert host["ReadonlyRootfs"] is True
    assert set(host["Tmpfs"]) == {"/tmp"} and "noexec" in host["Tmpfs"]["/tmp"]
    settings = get_settings()
    assert host["PidsLimit"] == settings.replica_pids_limit
    assert host["Memory"] == settings.replica_memory_mb * 1024 * 1024
    assert host["NanoCpus"] == int(settings.replica_cpus * 1_000_000_000)
    # The server really runs as nobody and cannot write its root filesystem.
    container = engine.runtime.client.containers.get(attrs["Id"])
    assert container.exec_run(["id", "-u"]).output.strip() == b"65534"
    assert container.exec_run(["touch", "/srv/www/x"]).exit_code != 0
    assert container.exec_run(["touch", "/tmp/x"]).exit_code == 0


def test_a_container_replica_keeps_its_user_and_needed_capabilities(
    engine: Engine, static_image: str
) -> None:
    attrs, _ = _run(engine, static_image, "container")
    host, config = attrs["HostConfig"], attrs["Config"]
    assert config["User"] == ""  # the image's own
    assert host["CapDrop"] == ["ALL"]
    assert set(host["CapAdd"]) == set(CONTAINER_CAPABILITIES)
    assert host["SecurityOpt"] == ["no-new-privileges:true"]
    assert not host["ReadonlyRootfs"]


def test_hardening_off_keeps_the_limits_only(
    engine: Engine, static_image: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHIPWAY_REPLICA_HARDENING", "false")
    monkeypatch.setenv("SHIPWAY_REPLICA_PIDS_LIMIT", "100")
    get_settings.cache_clear()
    try:
        attrs, _ = _run(engine, static_image, "static")
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    host = attrs["HostConfig"]
    assert not host["CapDrop"] and not host["SecurityOpt"] and not host["ReadonlyRootfs"]
    assert attrs["Config"]["User"] == "" and host["PidsLimit"] == 100
