"""Token lifecycle: list, create with expiry, revoke, rotate (all within one workspace)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from shipway.auth.models import ApiToken
from shipway.auth.service import create_token
from shipway.errors import Conflict, NotFound
from shipway.ids import utcnow


def list_tokens(session: Session, *, workspace_id: str) -> Sequence[ApiToken]:
    """The workspace's tokens, newest first (revoked and expired ones included)."""
    query = select(ApiToken).where(ApiToken.workspace_id == workspace_id)
    return session.scalars(query.order_by(ApiToken.created_at.desc(), ApiToken.id)).all()


def get_token(session: Session, *, workspace_id: str, token_id: str) -> ApiToken:
    """One token of the workspace (another workspace's token: NotFound)."""
    token = session.get(ApiToken, token_id)
    if token is None or token.workspace_id != workspace_id:
        raise NotFound(f"token {token_id} not found", token_id=token_id)
    return token


def create_expiring_token(
    session: Session,
    *,
    workspace_id: str,
    scopes: list[str],
    name: str,
    expires_in_seconds: int | None,
) -> tuple[ApiToken, str]:
    """A new token that expires ``expires_in_seconds`` from now (None: never)."""
    expires_at = None
    if expires_in_seconds is not None:
        expires_at = utcnow() + timedelta(seconds=expires_in_seconds)
    return create_token(
        session, workspace_id=workspace_id, scopes=scopes, name=name, expires_at=expires_at
    )


def revoke_token(session: Session, *, workspace_id: str, token_id: str) -> ApiToken:
    """Refuse the token from now on (idempotent: an already revoked token stays as it was;
    a rotated token still in its grace period is cut off now)."""
    token = get_token(session, workspace_id=workspace_id, token_id=token_id)
    now = utcnow()
    if token.revoked_at is None or token.revoked_at > now:
        token.revoked_at = now
    session.flush()
    return token


def rotate_token(
    session: Session, *, workspace_id: str, token_id: str, grace_seconds: int
) -> tuple[ApiToken, str]:
    """Issue a new secret with the same name and scopes; the old token is revoked after
    ``grace_seconds`` (0: at once). An expiring token's successor gets the same lifetime,
    counted from now. A revoked, expired or already rotated token cannot be rotated."""
    old = get_token(session, workspace_id=workspace_id, token_id=token_id)
    now = utcnow()
    if old.rotated_to is not None:
        raise Conflict(
            f"token {token_id} was already rotated to {old.rotated_to}", rotated_to=old.rotated_to
        )
    if (old.revoked_at is not None and old.revoked_at <= now) or (
        old.expires_at is not None and old.expires_at <= now
    ):
        raise Conflict(f"token {token_id} is revoked or expired; create a new one")
    expires_at = None
    if old.expires_at is not None:
        expires_at = now + (old.expires_at - old.created_at)
    new, secret = create_token(
        session,
        workspace_id=workspace_id,
        scopes=list(old.scopes),
        name=old.name,
        expires_at=expires_at,
    )
    old.rotated_to = new.id
    old.revoked_at = now + timedelta(seconds=grace_seconds)
    if old.expires_at is not None:
        old.revoked_at = min(old.revoked_at, old.expires_at)
    session.flush()
    return new, secret
