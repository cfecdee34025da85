"""``GET /metrics``: Prometheus text exposition."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from fastapi.security import HTTPAuthorizationCredentials
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from sqlalchemy.orm import Session

from shipway.auth.deps import bearer, current_principal, get_session
from shipway.config import get_settings
from shipway.metrics.collector import collector_for
from shipway.metrics.http import ProcessMetrics
from shipway.metrics.storage import StorageCollector
from shipway.schemas import error_responses
from shipway.webhooks.metrics import WebhookCollector

router = APIRouter(tags=["metrics"])


def metrics_access(
    credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
    session: Session = Depends(get_session),
) -> None:
    """Open to all when ``SHIPWAY_METRICS_PUBLIC`` (the default), else an admin token."""
    if get_settings().metrics_public:
        return
    current_principal(credentials, session).require("admin")


@router.get(
    "/metrics",
    response_class=Response,
    dependencies=[Depends(metrics_access)],
    # The token is optional (appended to the bearer requirement): public by default.
    openapi_extra={"security": [{}]},
    responses={
        200: {
            "content": {"text/plain": {}, "application/openmetrics-text": {}},
            "description": "Prometheus text format (OpenMetrics if the Accept header asks)",
        },
        **error_responses(401, 403, 503),
    },
)
def metrics(request: Request) -> Response:
    """Fleet-wide metrics (every workspace), read from the database on each scrape, and
    this API process's own (``shipway_http_*``, ``process_*``, ``python_*``).

    Every API process reports the same fleet-wide figures: aggregate those with ``max``
    over instances, the per-process ones with ``sum`` (deploy/prometheus-alerts.yml does).
    Unauthenticated by default, like most exporters: serve it on an internal network
    (or set ``SHIPWAY_METRICS_PUBLIC=false`` and scrape with an admin token). It holds
    counts and durations only, never ids or names.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector_for(get_settings().resolved_database_url))
    registry.register(ProcessMetrics())
    registry.register(WebhookCollector(get_settings().resolved_database_url))
    registry.register(StorageCollector())
    encode, content_type = choose_encoder(request.headers.get("accept", ""))
    return Response(encode(registry), headers={"Content-Type": content_type})
