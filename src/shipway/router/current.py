"""The router of the current settings, started on first use."""

from __future__ import annotations

from functools import lru_cache

from shipway.config import get_settings
from shipway.router.base import Router
from shipway.router.haproxy import HAProxyRouter


@lru_cache(maxsize=4)
def _router_for(directory: str) -> HAProxyRouter:
    del directory  # cache key; from_settings reads the same settings
    return HAProxyRouter.from_settings()


def router_config() -> Router:
    """The router of this data dir without starting it (for reading its saved state)."""
    return _router_for(str(get_settings().resolved_router_dir))


def get_router() -> Router:
    """The HAProxy router of this data dir; started (from its saved state) if not running."""
    router = _router_for(str(get_settings().resolved_router_dir))
    if not router.is_running():
        router.start()
    return router
