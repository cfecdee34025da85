"""Workspaces, tokens and authentication."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from shipway.auth.models import ApiToken
from shipway.errors import Conflict, Forbidden, InvalidInput, Unauthenticated
from shipway.ids import new_id, utcnow
from shipway.workspaces.models import Project, Workspace

SCOPES = ("deployments:read", "deployments:write", "admin")
# What each scope also grants: write implies read; admin implies both.
IMPLIED = {
    "deployments:read": {"deployments:read"},
    "deployments:write": {"deployments:read", "deployments:write"},
    "admin": {"deployments:read", "deployments:write", "admin"},
}


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token, its workspace and its effective scopes."""

    token_id: str
    workspace_id: str
    scopes: frozenset[str]

    @property
    def actor(self) -> str:
        """How this caller appears in Events."""
        return f"token:{self.token_id}"

    def require(self, scope: str) -> None:
        """Raise Forbidden unless this principal holds ``scope``."""
        if scope not in self.scopes:
            raise Forbidden(
                f"this token lacks the '{scope}' scope",
                required_scope=scope,
                token_scopes=sorted(self.scopes),
            )


def hash_secret(secret: str) -> str:
    """SHA-256 of a token secret (secrets are random, so no salt is needed)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def get_or_create_workspace(
    session: Session, *, name: str, external_workspace_id: str | None = None
) -> Workspace:
    """The workspace called ``name`` (or with that external id), created if missing.

    Conflict if the name belongs to a workspace with another external id (or the external
    id to a workspace of another name): two workspaces of one name, told apart only by
    their ids, would send tokens and deployments to the wrong tenant.
    """
    query = select(Workspace).where(Workspace.name == name)
    if external_workspace_id:
        query = select(Workspace).where(Workspace.external_workspace_id == external_workspace_id)
    workspace = session.scalars(query).first()
    if workspace is not None and workspace.name != name:
        raise Conflict(
            f"external workspace id {external_workspace_id!r} belongs to workspace "
            f"{workspace.name!r}, not {name!r}",
            code="workspace_conflict",
        )
    if workspace is None and external_workspace_id:
        named = session.scalars(select(Workspace).where(Workspace.name == name)).first()
        if named is not None:
            other = named.external_workspace_id
            raise Conflict(
                f"workspace {name!r} exists with "
                + (f"external id {other!r}" if other else "no external id")
                + f", not {external_workspace_id!r}: use its id, or another name",
                code="workspace_conflict",
            )
    if workspace is None:
        workspace = Workspace(name=name, external_workspace_id=external_workspace_id)
        session.add(workspace)
        session.flush()
        session.add(Project(workspace_id=workspace.id, name="default"))
        session.flush()
    return workspace


def create_token(
    session: Session,
    *,
    workspace_id: str,
    scopes: list[str],
    name: str = "",
    expires_at: datetime | None = None,
) -> tuple[ApiToken, str]:
    """Create a token; returns the row and the secret, shown only this once."""
    now = utcnow()
    if expires_at is not None and expires_at <= now:
        raise InvalidInput("a token cannot expire in the past", field="expires_at")
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise InvalidInput(
            f"unknown or missing scopes: {unknown or 'none given'}", allowed_scopes=list(SCOPES)
        )
    token_id = new_id("tok", 16)
    secret = f"shw_{secrets.token_urlsafe(32)}"
    token = ApiToken(
        id=token_id,
        workspace_id=workspace_id,
        name=name,
        secret_sha256=hash_secret(secret),
        scopes=sorted(set(scopes)),
        created_at=now,
        expires_at=expires_at,
    )
    session.add(token)
    session.flush()
    return token, secret


def authenticate(
    session: Session, *, authorization: str | None, touch_every_seconds: float = 60.0
) -> Principal:
    """Resolve an ``Authorization: Bearer …`` header to a Principal.

    Refuses unknown, revoked (``revoked_at`` reached: a rotated token's grace period may
    still run) and expired tokens; records ``last_used_at`` at most every
    ``touch_every_seconds``.
    """
    if not authorization:
        raise Unauthenticated("missing Authorization header; send 'Authorization: Bearer <token>'")
    scheme, _, secret = authorization.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise Unauthenticated("Authorization must be 'Bearer <token>'")
    digest = hash_secret(secret.strip())
    token = session.scalars(select(ApiToken).where(ApiToken.secret_sha256 == digest)).first()
    # The lookup is by hash (an attacker timing it learns about hashes, not secrets); the
    # constant-time comparison guards against a database that matches loosely (collation).
    if token is None or not hmac.compare_digest(token.secret_sha256, digest):
        raise Unauthenticated("invalid or revoked token")
    now = utcnow()
    if token.revoked_at is not None and token.revoked_at <= now:
        raise Unauthenticated("this token was revoked", reason="revoked")
    if token.expires_at is not None and token.expires_at <= now:
        raise Unauthenticated("this token has expired", reason="expired")
    last = token.last_used_at
    if last is None or now - last >= timedelta(seconds=touch_every_seconds):
        token.last_used_at = now  # one write per token per period, not one per request
    effective: set[str] = set()
    for scope in token.scopes:
        effective |= IMPLIED.get(scope, set())
    return Principal(
        token_id=token.id, workspace_id=token.workspace_id, scopes=frozenset(effective)
    )
