"""runtime: the container engine behind a small protocol."""

from functools import lru_cache

from shipway.runtime.base import Runtime


def get_runtime() -> Runtime:
    """The configured container runtime: ``SHIPWAY_RUNTIME=docker`` (one engine, the
    default) or ``swarm`` (a Docker Swarm through its managers: ``SHIPWAY_SWARM_MANAGERS``,
    else the manager at ``DOCKER_HOST``; builds run on ``DOCKER_HOST``'s engine)."""
    from shipway.config import get_settings

    settings = get_settings()
    if settings.runtime == "swarm":
        managers = tuple(settings.swarm_manager_endpoints)
        return _runtime("swarm", managers, settings.swarm_failover_seconds)
    return _runtime("docker")


@lru_cache(maxsize=4)
def _runtime(kind: str, managers: tuple[str, ...] = (), failover_seconds: float = 60.0) -> Runtime:
    if kind == "swarm":
        from shipway.runtime.swarm_runtime import SwarmRuntime

        return SwarmRuntime(managers=managers, failover_seconds=failover_seconds)
    from shipway.runtime.docker_runtime import DockerRuntime

    return DockerRuntime()
