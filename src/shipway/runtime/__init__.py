"""runtime: the container engine behind a small protocol."""

from functools import lru_cache

from shipway.runtime.base import Runtime


@lru_cache(maxsize=1)
def get_runtime() -> Runtime:
    """The configured container runtime (the local Docker engine)."""
    from shipway.runtime.docker_runtime import DockerRuntime

    return DockerRuntime()
