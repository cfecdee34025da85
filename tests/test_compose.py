"""docker-compose.yml (production mode) agrees with the CLI, the settings and itself.

tests/topology/test_compose_up.py brings it up for real (`make test-topology`)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import typer.main

from shipway.cli import app
from shipway.config import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
SHIPWAY_SERVICES = {
    "migrate": "db",
    "api": "api",
    "worker": "worker",
    "relay": "relay",
    "router": "router",
}
INFRA = {"postgres", "redis", "registry"}
# Services that drive the router; they reach replicas on the project's network.
ROUTER_CLIENTS = ("worker", "relay", "api")
# Read straight from the environment by the CLI, not through Settings.
EXTRA_ENV = {"SHIPWAY_LOG_LEVEL"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    yaml = pytest.importorskip("yaml")
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def test_every_service_is_there(services: dict[str, Any]) -> None:
    assert set(SHIPWAY_SERVICES) | INFRA <= set(services)


def test_shipway_services_run_real_cli_commands(services: dict[str, Any]) -> None:
    cli = typer.main.get_command(app)
    assert isinstance(cli, typer.core.TyperGroup)
    for name, subcommand in SHIPWAY_SERVICES.items():
        service = services[name]
        assert service["image"] == services["api"]["image"] == "${SHIPWAY_IMAGE:-shipway:local}"
        assert service.get("build") == ".", name
        argv = service["command"]
        assert isinstance(argv, list) and argv[0] == subcommand, (name, argv)
        command = cli.commands[subcommand]
        rest = argv[1:]
        if isinstance(command, typer.core.TyperGroup):  # db upgrade
            assert rest and rest[0] in command.commands, (name, argv)
            command, rest = command.commands[rest[0]], rest[1:]
        options = {opt for param in command.params for opt in param.opts}
        flags = [arg for arg in rest if arg.startswith("--")]
        assert set(flags) <= options, (name, flags, options)
    assert services["api"]["command"][:3] == ["api", "--host", "0.0.0.0"]


def test_dockerfile_runs_the_shipway_cli() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    # Any Debian bookworm base: Docker Hub's python:3.11-slim by default, `make images` the
    # debootstrapped one (no public registry needed).
    assert re.search(r"^ARG BASE=python:3\.11-slim$", dockerfile, re.M)
    assert re.search(r"^FROM \$\{BASE\}", dockerfile, re.M)
    assert "haproxy" in dockerfile  # the router service runs it
    assert re.search(r'^ENTRYPOINT \["shipway"\]', dockerfile, re.M)
    for path in re.findall(r"^COPY (.+) \S+$", dockerfile, re.M):
        for item in path.split():
            if item.startswith("--"):  # --from=<stage>
                break
            assert (ROOT / item).exists(), f"Dockerfile copies {item}, which is missing"


def test_environment_names_real_settings(services: dict[str, Any]) -> None:
    known = {f"SHIPWAY_{field.upper()}" for field in Settings.model_fields} | EXTRA_ENV
    for name in SHIPWAY_SERVICES:
        env = services[name]["environment"]
        assert isinstance(env, dict), name
        unknown = {key for key in env if key.startswith("SHIPWAY_")} - known
        assert not unknown, f"{name}: {unknown} are not shipway settings"
        database = env["SHIPWAY_DATABASE_URL"]
        assert database.startswith("postgresql+psycopg://"), database
        assert "@postgres:5432/" in database, database
        assert env["SHIPWAY_BROKER_URL"] == "redis://redis:6379/0"


def test_database_credentials_match_postgres(services: dict[str, Any]) -> None:
    pg_env = services["postgres"]["environment"]
    url = services["api"]["environment"]["SHIPWAY_DATABASE_URL"]
    match = re.fullmatch(r"postgresql\+psycopg://([^:]+):(.+)@postgres:5432/(\w+)", url)
    assert match, url
    user, password, database = match.groups()
    assert (user, password, database) == (
        pg_env["POSTGRES_USER"],
        pg_env["POSTGRES_PASSWORD"],
        pg_env["POSTGRES_DB"],
    )
    assert services["postgres"]["image"] == "${POSTGRES_IMAGE:-shipway/support:local}"
    assert services["postgres"]["command"] == ["postgres"]  # as postgres:15 runs


def test_the_router_is_reachable_and_owned_by_one_service(services: dict[str, Any]) -> None:
    """The router service owns HAProxy and publishes the route ports; the others use its
    sockets (external mode) and reach replicas on the project's network."""
    router = services["router"]
    assert router["command"] == ["router", "run"]
    env = services["api"]["environment"]
    assert env["SHIPWAY_ROUTER_EXTERNAL"] == "true"
    assert env["SHIPWAY_ROUTER_BIND_HOST"] == "0.0.0.0"
    port_range = env["SHIPWAY_ROUTER_PORT_RANGE"]
    assert any(port.endswith(f"{port_range}:{port_range}") for port in router["ports"]), router[
        "ports"
    ]
    network = compose_network(services)
    for name in ROUTER_CLIENTS:
        service_env = services[name]["environment"]
        assert service_env["SHIPWAY_REPLICA_NETWORK"] == network, name
        assert service_env["SHIPWAY_ROUTER_EXTERNAL"] == "true", name
    for name in ("worker", "relay"):
        assert any(v.endswith(":/var/run/docker.sock") for v in services[name]["volumes"]), name
    registry = env["SHIPWAY_REGISTRY"]
    assert any(p.endswith(f"{registry}:5000") for p in services["registry"]["ports"])


def compose_network(services: dict[str, Any]) -> str:
    compose_file: dict[str, Any] = __import__("yaml").safe_load(COMPOSE.read_text())
    return str(compose_file["networks"]["default"]["name"])


def test_dependencies_are_consistent(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for dependency, spec in (service.get("depends_on") or {}).items():
            assert dependency in services, (name, dependency)
            condition = spec["condition"]
            if condition == "service_healthy":
                assert "healthcheck" in services[dependency], (name, dependency)
            elif condition == "service_completed_successfully":
                assert services[dependency].get("restart") == "no", dependency
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "migrate" not in services["router"].get("depends_on", {})  # needs no database
    for name in set(SHIPWAY_SERVICES) - {"migrate", "router"}:
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert {"postgres", "redis"} <= set(depends), name


def test_long_running_services_have_healthchecks(services: dict[str, Any]) -> None:
    for name, service in services.items():
        if name != "migrate":
            assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"


def test_bind_mounts_exist(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).is_file(), f"{name} mounts {source}, which is missing"


def compose_cli() -> list[str] | None:
    for argv in (["docker", "compose"], ["docker-compose"]):
        if not shutil.which(argv[0]):
            continue
        probe = subprocess.run([*argv, "version"], capture_output=True, timeout=30, check=False)
        if probe.returncode == 0:
            return argv
    return None


def test_docker_compose_accepts_the_file() -> None:
    argv = compose_cli()
    if argv is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    result = subprocess.run(
        [*argv, "-f", str(COMPOSE), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
