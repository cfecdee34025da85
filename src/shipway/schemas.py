"""Shared API schema pieces: timestamps, the error shape, pages."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer

from shipway.ids import rfc3339

Timestamp = Annotated[
    datetime,
    PlainSerializer(rfc3339, return_type=str, when_used="json"),
    Field(description="RFC 3339, UTC, with a Z suffix", json_schema_extra={"format": "date-time"}),
]

T = TypeVar("T")


class ReadModel(BaseModel):
    """Base of every response model (built from ORM rows)."""

    model_config = ConfigDict(from_attributes=True)


class ErrorBody(BaseModel):
    """The inside of every error response."""

    code: str = Field(description="Stable machine-readable code, e.g. version_not_promotable")
    message: str = Field(description="What went wrong, for a person")
    details: dict[str, Any] = Field(default_factory=dict)


class ErrorResponse(BaseModel):
    """``{"error": {"code", "message", "details"}}`` — the one error shape."""

    error: ErrorBody


class Page(BaseModel, Generic[T]):
    """A page of results with an opaque keyset cursor for the next one."""

    data: list[T]
    next_cursor: str | None = Field(
        description="Pass as ?cursor= for the next page; null at the end"
    )


class FailureDiagnostics(BaseModel):
    """User-facing failure diagnostics."""

    model_config = ConfigDict(extra="allow")

    title: str = ""
    description: str = ""
    action: str = ""
    evidence: dict[str, Any] = Field(default_factory=dict)


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entries documenting the error shape for ``codes``."""
    meaning = {
        400: "Bad request (for example a missing Idempotency-Key)",
        401: "Missing or invalid bearer token",
        403: "Token lacks the required scope",
        404: "Not found (or belongs to another workspace)",
        409: "Conflict with the current state",
        413: "Request body too large",
        415: "Unsupported media type",
        422: "Invalid input, or Idempotency-Key reused with another body",
        429: "Too many requests",
        503: "A dependency is unavailable",
        507: "The server is out of storage space; nothing was stored (insufficient_storage)",
    }
    retry = {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}}
    return {
        code: {"model": ErrorResponse, "description": meaning[code]}
        | ({"headers": retry} if code == 507 else {})
        for code in codes
    }
