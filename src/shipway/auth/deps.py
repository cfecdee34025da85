"""FastAPI dependencies: database session and the authenticated principal."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from shipway.auth.ratelimit import seconds_to_wait
from shipway.auth.service import Principal, authenticate
from shipway.config import get_settings
from shipway.db import session_factory, statement_at_a_time
from shipway.errors import RateLimited

bearer = HTTPBearer(auto_error=False, description="API token: `Authorization: Bearer shw_…`")


async def get_session() -> AsyncIterator[Session]:
    """A session per request; routes open their own transaction with ``session.begin()``.

    Made and closed on the event loop, not in the thread pool: making one does no I/O (it
    connects at its first statement), closing one whose route left a read open is one short
    ROLLBACK, and each thread pool hop is a thread wake-up that waits its turn for a CPU on
    a busy machine."""
    session = session_factory()()
    try:
        yield session
    finally:
        session.close()


def current_principal(
    credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
    session: Session = Depends(get_session),
) -> Principal:
    """The caller, or 401 (unknown, revoked or expired token), or 429 (over its rate)."""
    settings = get_settings()
    header = f"{credentials.scheme} {credentials.credentials}" if credentials else None
    with session.begin():
        # A lookup and at most one touch of last_used_at, each right on its own: no BEGIN
        # and COMMIT round trips on every request (PostgreSQL).
        statement_at_a_time(session)
        principal = authenticate(
            session, authorization=header, touch_every_seconds=settings.token_last_used_seconds
        )
    wait = seconds_to_wait(
        key=principal.token_id,
        per_minute=settings.token_rate_limit_per_minute,
        burst=settings.token_rate_limit_burst,
        broker_url=settings.broker_url,
    )
    if wait > 0:
        raise RateLimited(
            "this token sent more requests than its rate limit allows; retry later",
            retry_after=wait,
            limit_per_minute=settings.token_rate_limit_per_minute,
            burst=settings.token_rate_limit_burst,
        )
    return principal


def requires(scope: str) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency that admits only principals holding ``scope`` (else 403)."""

    async def check(principal: Principal = Depends(current_principal)) -> Principal:
        principal.require(scope)
        return principal

    check.__name__ = f"requires_{scope.replace(':', '_')}"
    return check


reader = requires("deployments:read")
writer = requires("deployments:write")
admin = requires("admin")
