"""Domain errors. They know nothing of HTTP; ``shipway.api`` maps each kind to a status."""

from __future__ import annotations

from typing import Any


class ShipwayError(Exception):
    """Base of every domain error: a stable ``code``, a message for people, details."""

    code = "error"

    def __init__(self, message: str, *, code: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = details


class NotFound(ShipwayError):
    """The resource does not exist (or belongs to another workspace)."""

    code = "not_found"


class Conflict(ShipwayError):
    """The request is valid but the current state does not allow it."""

    code = "conflict"


class InvalidTransition(Conflict):
    """A state machine refused a transition; the row is unchanged."""

    code = "invalid_transition"


class InvalidInput(ShipwayError):
    """Input is well-formed but its values are wrong."""

    code = "invalid_input"


class BadRequest(ShipwayError):
    """The request is missing something required (for example a header)."""

    code = "bad_request"


class IdempotencyMismatch(ShipwayError):
    """The Idempotency-Key was used before with another request body."""

    code = "idempotency_key_reused"


class PayloadTooLarge(ShipwayError):
    """The upload, or what it unpacks to, is over a configured limit."""

    code = "payload_too_large"


class UnsupportedMediaType(ShipwayError):
    """The upload is not in a format shipway accepts."""

    code = "unsupported_media_type"


class Unauthenticated(ShipwayError):
    """No valid credentials."""

    code = "unauthenticated"


class Forbidden(ShipwayError):
    """Valid credentials without the needed scope."""

    code = "insufficient_scope"


class ServiceUnavailable(ShipwayError):
    """A dependency (database, broker) cannot be reached right now."""

    code = "service_unavailable"


class RetryLater(ShipwayError):
    """A refusal that passes with time: the caller may retry after ``retry_after`` seconds."""

    def __init__(self, message: str, *, retry_after: float, **details: Any) -> None:
        super().__init__(message, retry_after_seconds=round(retry_after, 3), **details)
        self.retry_after = retry_after


class RateLimited(RetryLater):
    """The caller sent more requests than its limit allows; retry after ``retry_after``."""

    code = "rate_limited"


class StorageExhausted(RetryLater):
    """The server's disk (or quota) is full: nothing was written; retry once space is freed."""

    code = "insufficient_storage"
