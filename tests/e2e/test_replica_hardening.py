"""Replica hardening on one Docker engine, checked with ``docker inspect``.

A static site runs as nobody with every capability dropped, a read-only root with a
tmpfs /tmp, no-new-privileges, the default pids/memory/CPU limits, and still serves; a
container app keeps its image's user and the few capabilities it may need; with
hardening off, nothing is confined but the limits stay.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from shipway.config import get_settings
from shipway.runtime.base import Replica, ReplicaSpec
from shipway.runtime.hardening import CONTAINER_CAPABILITIES, hardening_for, limits_for
from tests.conftest import TokenFactory, auth
from tests.e2e.test_docker_replicas import Engine, _answers, engine
from tests.support.processes import wait_until
from tests.test_cli_domains import api_url, run

pytestmark = pytest.mark.e2e
__all__ = ["api_url", "engine"]  # the fixtures


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


class _Recorder:
    """A runtime that records the specs it is asked to run."""

    def __init__(self) -> None:
        self.specs: list[ReplicaSpec] = []

    def run_replica(self, spec: ReplicaSpec) -> Replica:
        self.specs.append(spec)
        return Replica(spec.name, spec.name, spec.labels, "running", None, 0, 1, address="x")


@pytest.mark.parametrize("hardened", [True, False])
def test_a_deployment_can_relax_hardening_for_its_replicas(hardened: bool) -> None:
    """``hardened: false`` (create or PATCH) runs the image's defaults; the limits stay."""
    from shipway.catalog.models import Deployment, Release, Version
    from shipway.releases.replicas import Target, scale_up

    deployment = Deployment(
        id="dep_x", replicas=1, runtime_port=8080, resources={}, settings={"hardened": hardened}
    )
    version = Version(id="ver_x", kind="static", runtime_image="img", runtime_port=8080)
    release = Release(id="rel_x", deployment_id="dep_x", version_id="ver_x", environment="p")
    recorder = _Recorder()
    target = Target.of(version=version, deployment=deployment)
    scale_up(runtime=recorder, release=release, target=target, retried=False)  # type: ignore[arg-type]
    (spec,) = recorder.specs
    assert spec.hardening == (hardening_for("static") if hardened else None)
    assert spec.pids_limit == get_settings().replica_pids_limit


def test_hardened_is_a_deployment_setting(client: TestClient, make_token: TokenFactory) -> None:
    token = make_token("deployments:write")
    created = client.post(
        "/api/v1/deployments", json={"name": "app", "kind": "container"}, headers=auth(token)
    ).json()
    assert created["settings"]["hardened"] is True
    patched = client.patch(
        f"/api/v1/deployments/{created['id']}", json={"hardened": False}, headers=auth(token)
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["settings"]["hardened"] is False
    events = client.get(f"/api/v1/deployments/{created['id']}/events", headers=auth(token))
    assert "hardened" in events.text


def test_the_cli_creates_a_deployment_without_hardening(
    api_url: str, make_token: TokenFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SHIPWAY_CONFIG", str(tmp_path / "config.toml"))
    secret = make_token("deployments:write")["Authorization"].removeprefix("Bearer ")
    for flags, expected in (([], True), (["--no-hardening"], False)):
        name = f"app-{expected}".lower()
        made = run(monkeypatch, api_url, secret, "deployments", "create", name, *flags, "--json")
        assert made.exit_code == 0, made.output
        assert json.loads(made.stdout)["settings"]["hardened"] is expected
