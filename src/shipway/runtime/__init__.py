"""runtime: the container engine behind a small protocol."""

from functools import lru_cache

from shipway.runtime.base import Runtime


def get_runtime() -> Runtime:
    """The configured container runtime: ``SHIPWAY_RUNTIME=docker`` (one engine, the
    default) or ``swarm`` (a Docker Swarm through the manager at ``DOCKER_HOST``)."""
    from shipway.config import get_settings

    return _runtime(get_settings().runtime)


@lru_cache(maxsize=2)
def _runtime(kind: str) -> Runtime:
    if kind == "swarm":
        from shipway.runtime.swarm_runtime import SwarmRuntime

        return SwarmRuntime()
    from shipway.runtime.docker_runtime import DockerRuntime

    return DockerRuntime()
