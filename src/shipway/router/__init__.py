"""The router: one public address per (deployment, environment), HAProxy underneath."""

from shipway.router.base import Route, Router, RouterError, Server, ServerState, ServerStats
from shipway.router.haproxy import HAProxyRouter

__all__ = [
    "HAProxyRouter",
    "Route",
    "Router",
    "RouterError",
    "Server",
    "ServerState",
    "ServerStats",
]
