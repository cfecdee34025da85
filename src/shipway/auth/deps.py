"""FastAPI dependencies: database session and the authenticated principal."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from shipway.auth.service import Principal, authenticate
from shipway.db import session_factory

bearer = HTTPBearer(auto_error=False, description="API token: `Authorization: Bearer shw_…`")


def get_session() -> Iterator[Session]:
    """A session per request; routes open their own transaction with ``session.begin()``."""
    session = session_factory()()
    try:
        yield session
    finally:
        session.close()


def current_principal(
    credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
    session: Session = Depends(get_session),
) -> Principal:
    """The caller, or 401."""
    header = f"{credentials.scheme} {credentials.credentials}" if credentials else None
    with session.begin():
        return authenticate(session, authorization=header)


def requires(scope: str) -> Callable[[Principal], Principal]:
    """A dependency that admits only principals holding ``scope`` (else 403)."""

    def check(principal: Principal = Depends(current_principal)) -> Principal:
        principal.require(scope)
        return principal

    check.__name__ = f"requires_{scope.replace(':', '_')}"
    return check


reader = requires("deployments:read")
writer = requires("deployments:write")
admin = requires("admin")
