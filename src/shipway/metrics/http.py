"""This API process's own metrics: HTTP requests by route and status, their latency, and
the process (CPU, memory, open files) — per process, unlike the database-wide ones.

Routes are the path templates (``/api/v1/deployments/{deployment_id}``), never the paths
themselves, so the number of series stays bounded; a request no route matched counts
under ``unmatched``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

disable_created_metrics()  # no *_created series: they double the output for no alert
PROCESS_REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=PROCESS_REGISTRY)
PlatformCollector(registry=PROCESS_REGISTRY)
REQUESTS = Counter(
    "shipway_http_requests",
    "HTTP requests this API process answered, by method, route template and status.",
    ("method", "route", "status"),
    registry=PROCESS_REGISTRY,
)
LATENCY = Histogram(
    "shipway_http_request_duration_seconds",
    "Time from a request's arrival to the end of its answer, in this API process.",
    ("method", "route"),
    buckets=LATENCY_BUCKETS,
    registry=PROCESS_REGISTRY,
)


class ProcessMetrics(Collector):
    """Hands this process's metrics to a scrape's registry."""

    def collect(self) -> Iterator[Metric]:
        yield from PROCESS_REGISTRY.collect()


class HttpMetrics:
    """ASGI middleware counting every HTTP request by route template and status."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # unless an answer starts

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = _template(scope)
            method = scope.get("method", "")
            REQUESTS.labels(method, route, str(status)).inc()
            LATENCY.labels(method, route).observe(time.perf_counter() - started)


def _template(scope: Scope) -> str:
    """The matched route's full path template. FastAPI keeps a route of an included router
    with its prefix in ``scope["fastapi"]["effective_route_context"]`` (``scope["route"]``
    has the path without the prefix); other Starlette routes are in ``route``."""
    fastapi = scope.get("fastapi")
    found = [fastapi.get("effective_route_context")] if isinstance(fastapi, dict) else []
    for candidate in (*found, scope.get("route")):
        path = getattr(candidate, "path", None)
        if isinstance(path, str) and path:
            return path
    return "unmatched"
