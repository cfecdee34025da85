"""The FastAPI application: routers, the one error shape, health endpoints."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from sqlalchemy import text
from sqlalchemy.exc import DataError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shipway import __version__, errors
from shipway.config import get_settings
from shipway.db import get_engine
from shipway.schemas import error_responses
from shipway.storage import data_dir_space, exhausted, is_exhaustion
from shipway.workers_registry.supervision import supervised_workers

log = logging.getLogger(__name__)

STATUS_OF: list[tuple[type[errors.ShipwayError], int]] = [
    (errors.NotFound, 404),
    (errors.Conflict, 409),
    (errors.InvalidInput, 422),
    (errors.IdempotencyMismatch, 422),
    (errors.BadRequest, 400),
    (errors.Unauthenticated, 401),
    (errors.Forbidden, 403),
    (errors.ServiceUnavailable, 503),
    (errors.PayloadTooLarge, 413),
    (errors.UnsupportedMediaType, 415),
    (errors.RateLimited, 429),
    (errors.StorageExhausted, 507),
]
HTTP_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
    503: "service_unavailable",
    507: "insufficient_storage",
}


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    """The one error shape."""
    return {"error": {"code": code, "message": message, "details": details or {}}}


def _domain_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, errors.ShipwayError)
    status = next((s for cls, s in STATUS_OF if isinstance(exc, cls)), 400)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    if isinstance(exc, errors.RetryLater):
        headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after)))}
    return JSONResponse(error_body(exc.code, exc.message, exc.details), status, headers=headers)


def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = [
        {
            "loc": [str(p) for p in e.get("loc", ())],
            "msg": e.get("msg", ""),
            "type": e.get("type", ""),
        }
        for e in exc.errors()
    ]
    if any(p["type"] == "json_invalid" for p in problems):
        return JSONResponse(
            error_body("malformed_json", "request body is not valid JSON", {"errors": problems}),
            400,
        )
    return JSONResponse(
        error_body("validation_error", "request failed validation", {"errors": problems}), 422
    )


def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400 and isinstance(exc.__cause__, UnicodeDecodeError):
        # FastAPI's generic "error parsing the body": a JSON body that is not UTF-8.
        return JSONResponse(error_body("malformed_json", "request body is not valid JSON"), 400)
    code = HTTP_CODES.get(exc.status_code, "error")
    headers = dict(getattr(exc, "headers", None) or {})
    if exc.status_code == 405:
        headers["Allow"] = _allowed_methods(request, headers.get("Allow", ""))
    return JSONResponse(error_body(code, str(exc.detail)), exc.status_code, headers=headers)


def _allowed_methods(request: Request, allow: str) -> str:
    """Every documented method of the path: Starlette's 405 names only one route's methods."""
    methods = {method.strip() for method in allow.split(",") if method.strip()}
    for template, operations in request.app.openapi().get("paths", {}).items():
        pattern = "[^/]+".join(re.escape(part) for part in re.split(r"\{[^/}]+\}", template))
        if re.fullmatch(pattern, request.url.path):
            methods |= {method.upper() for method in operations}
    return ", ".join(sorted(methods))


def _database_down(request: Request, exc: Exception) -> JSONResponse:
    if is_exhaustion(exc):  # SQLite's "database or disk is full", PostgreSQL's disk_full
        return _domain_error(request, exhausted("database", exc))
    log.warning("database unavailable: %s", exc)
    return JSONResponse(
        error_body("database_unavailable", "the database is unreachable; retry shortly"),
        503,
        headers={"Retry-After": "2"},
    )


def _value_refused(_request: Request, exc: Exception) -> JSONResponse:
    # Input the validators let through but the database cannot store or compare,
    # e.g. a NUL character in an id, cursor or name (PostgreSQL text refuses it).
    log.warning("database refused a value: %s", exc)
    return JSONResponse(
        error_body("invalid_input", "a value in the request cannot be stored or searched for"),
        422,
    )


def _os_error(request: Request, exc: Exception) -> JSONResponse:
    if is_exhaustion(exc):  # ENOSPC/EDQUOT from any write a request made
        return _domain_error(request, exhausted("write", exc))
    return _unexpected(request, exc)


def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return JSONResponse(error_body("internal_error", "internal error; it has been logged"), 500)


class BodyTooLarge(StarletteHTTPException):
    """A streamed request body passed the limit (FastAPI re-raises HTTPExceptions from reads)."""


class BodySizeLimit:
    """Refuse request bodies over a limit with 413, before reading them."""

    def __init__(self, app: ASGIApp, *, max_bytes: int, upload_max_bytes: int) -> None:
        self.app, self.max_bytes, self.upload_max_bytes = app, max_bytes, upload_max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        is_upload = scope["method"] == "POST" and scope["path"].endswith("/versions")
        limit = self.upload_max_bytes if is_upload else self.max_bytes
        length = dict(scope.get("headers") or {}).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            body = error_body(
                "payload_too_large",
                f"request body is larger than {limit} bytes",
                {"max_bytes": limit},
            )
            await JSONResponse(body, 413)(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            # A body sent without Content-Length (chunked) is counted as it arrives.
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(413, f"request body is larger than {limit} bytes")
            return message

        await self.app(scope, counted, send)


def _health_router() -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/healthz")
    def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok", "version": __version__}

    @router.get("/readyz", responses=error_responses(503))
    def readyz() -> JSONResponse:
        """The database and the broker are reachable, and the data directory has room.

        200 ``ready``; 200 ``degraded`` while free space is below SHIPWAY_MIN_FREE_BYTES
        (everything works: free space soon); 503 ``not_ready`` when a dependency is
        unreachable or free space is at or below SHIPWAY_RESERVED_FREE_BYTES.
        """
        checks = {"database": _check_database(), "broker": _check_broker()}
        checks["storage"] = data_dir_space().check()
        if (workers := _check_supervised_workers()) is not None:
            checks["workers"] = workers
        if any(v != "ok" and not v.startswith("low") for v in checks.values()):
            message = "a dependency is unreachable or storage is exhausted"
            return JSONResponse(error_body("not_ready", message, {"checks": checks}), 503)
        status = "ready" if all(v == "ok" for v in checks.values()) else "degraded"
        return JSONResponse({"status": status, "checks": checks})

    return router


def _check_database() -> str:
    try:
        with get_engine().connect() as conn:
            conn.execute(text("SELECT 1"))
        return "ok"
    except Exception as error:
        return f"unreachable: {type(error).__name__}"


def _check_supervised_workers() -> str | None:
    """Under ``shipway up``: "ok" while a worker runs for every queue; else which does not."""
    workers = supervised_workers()
    if workers is None:
        return None
    down = [
        f"{','.join(w.queues)}: not running ({w.last_exit or 'starting'}"
        + (f", restart in {w.restart_in_seconds:.0f} s" if w.restart_in_seconds is not None else "")
        + ")"
        for w in workers
        if not w.alive
    ]
    return "; ".join(down) if down else "ok"


def _check_broker() -> str:
    from workers.celery_app import current_celery

    try:
        with current_celery().connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=get_settings().dispatch_timeout_seconds)
        return "ok"
    except Exception as error:
        return f"unreachable: {type(error).__name__}"


ERROR_SCHEMA = {"$ref": "#/components/schemas/ErrorResponse"}
RATE_LIMITED = {
    "description": "The token's rate limit (SHIPWAY_TOKEN_RATE_LIMIT_PER_MINUTE) is reached",
    "headers": {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}},
}


def _document_error_shape(app: FastAPI) -> None:
    """Make the OpenAPI document tell the truth about errors.

    FastAPI documents its own ``HTTPValidationError`` for 422 and uses a route's
    ``response_class`` media type (e.g. text/plain) for error responses; every error
    shipway sends is ``ErrorResponse`` JSON (see ``_validation_error``). Every route that
    needs a token may answer 429 (the token's rate limit, ``auth.deps``). Routes read
    ``Idempotency-Key`` as optional so that its absence is a 400 with its own code, but
    the header is required.
    """
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                responses = operation.get("responses", {})
                if "401" in responses:  # every route behind a token has its rate limit
                    responses.setdefault("429", dict(RATE_LIMITED))
                for status, response in responses.items():
                    if str(status)[0] in "45":
                        response["content"] = {"application/json": {"schema": ERROR_SCHEMA}}
                for parameter in operation.get("parameters", []):
                    if parameter["in"] == "header" and parameter["name"] == "Idempotency-Key":
                        parameter["required"] = True
        components = schema.get("components", {}).get("schemas", {})
        for unused in ("HTTPValidationError", "ValidationError"):
            components.pop(unused, None)
        _flatten_form_bodies(components)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _flatten_form_bodies(components: dict[str, Any]) -> None:
    """Spell multipart bodies out as one flat object, as client generators expect.

    A form model beside a file makes FastAPI write ``{"allOf": [form], "properties":
    {"source": …}}``; openapi-python-client keeps only the ``allOf`` (and drops the
    file). The file field also gets ``format: binary``, the spelling generators read.
    """
    for name, body in components.items():
        if not name.startswith("Body_") or "allOf" not in body:
            continue
        properties: dict[str, Any] = {}
        required: list[str] = []
        for part in body.pop("allOf"):
            part = components.get(part.get("$ref", "").rsplit("/", 1)[-1], part)
            properties.update(part.get("properties", {}))
            required += part.get("required", [])
        properties.update(body.get("properties", {}))
        for field in properties.values():
            if field.get("contentMediaType") == "application/octet-stream":
                field["format"] = "binary"
        body["properties"] = properties
        body["required"] = required + body.get("required", [])


def _operation_id(route: APIRoute) -> str:
    """The operation id is the route function's name (``list_deployments``): unique
    across the API (tests/test_openapi_client.py checks), and what a generated client
    calls its function."""
    return route.name


@asynccontextmanager
async def _lifespan(_app: FastAPI) -> AsyncIterator[None]:
    """At start, the broker sender warms up in the background (never delays readiness)."""
    from workers.celery_app import warm_sender_in_background

    warm_sender_in_background()
    yield


def create_app() -> FastAPI:
    """Build the API application (and wire the features into the job engine)."""
    from shipway.auth.routes import router as tokens
    from shipway.bootstrap import load_features
    from shipway.builds.routes import router as builds
    from shipway.config_vars.routes import router as config_read
    from shipway.dashboard.routes import mount_dashboard
    from shipway.deployments.event_routes import router as events
    from shipway.deployments.routes import router as deployments
    from shipway.domains.routes import router as domains
    from shipway.jobs.routes import router as jobs
    from shipway.jobs.stream_routes import router as job_stream
    from shipway.metrics.http import HttpMetrics
    from shipway.metrics.routes import router as metrics
    from shipway.queue.routes import router as queue
    from shipway.releases.config_routes import router as config_change
    from shipway.releases.routes import router as releases
    from shipway.versions.routes import router as versions
    from shipway.webhooks.routes import router as webhooks
    from workers.celery_app import send_job

    load_features(sender=send_job)
    app = FastAPI(
        title="shipway",
        version=__version__,
        generate_unique_id_function=_operation_id,
        lifespan=_lifespan,
        description="Build-and-promote control plane. Errors: "
        '`{"error": {"code", "message", "details"}}`.',
    )
    for router in (
        deployments,
        domains,
        config_read,
        config_change,
        builds,
        versions,
        releases,
        jobs,
        job_stream,
        events,
        queue,
        tokens,
        webhooks,
    ):
        app.include_router(router, prefix="/api/v1")  # once: no router of routers
    app.include_router(metrics)
    app.include_router(_health_router())
    mount_dashboard(app)
    _document_error_shape(app)
    app.add_exception_handler(errors.ShipwayError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(OperationalError, _database_down)
    app.add_exception_handler(DataError, _value_refused)
    app.add_exception_handler(OSError, _os_error)
    app.add_exception_handler(Exception, _unexpected)
    settings = get_settings()
    app.add_middleware(
        BodySizeLimit,
        max_bytes=settings.max_request_bytes,
        upload_max_bytes=settings.max_upload_bytes + 1024 * 1024,
    )
    app.add_middleware(HttpMetrics)  # outermost: counts refused bodies too
    return app
