"""HTTP routes of API tokens (admin scope): list, create, revoke, rotate."""

from __future__ import annotations

from fastapi import APIRouter, Body, Depends
from sqlalchemy.orm import Session

from shipway.auth import tokens
from shipway.auth.deps import admin, get_session
from shipway.auth.models import ApiToken
from shipway.auth.schemas import TokenCreate, TokenCreated, TokenList, TokenRead, TokenRotate
from shipway.auth.service import Principal
from shipway.schemas import error_responses

router = APIRouter(prefix="/tokens", tags=["tokens"])


def _created(token: ApiToken, secret: str) -> TokenCreated:
    return TokenCreated(**TokenRead.model_validate(token).model_dump(), secret=secret)


@router.get("", response_model=TokenList, responses=error_responses(401, 403))
def list_tokens(
    principal: Principal = Depends(admin), session: Session = Depends(get_session)
) -> TokenList:
    """The workspace's tokens (metadata only: secrets are never shown again)."""
    with session.begin():
        rows = tokens.list_tokens(session, workspace_id=principal.workspace_id)
        return TokenList(data=[TokenRead.model_validate(row) for row in rows])


@router.post(
    "",
    status_code=201,
    response_model=TokenCreated,
    responses=error_responses(400, 401, 403, 413, 422),
)
def create_token(
    body: TokenCreate,
    principal: Principal = Depends(admin),
    session: Session = Depends(get_session),
) -> TokenCreated:
    """A new token of the workspace, optionally expiring; its secret is answered only now."""
    with session.begin():
        token, secret = tokens.create_expiring_token(
            session,
            workspace_id=principal.workspace_id,
            scopes=body.scopes,
            name=body.name,
            expires_in_seconds=body.expires_in_seconds,
        )
        return _created(token, secret)


@router.post(
    "/{token_id}/revoke", response_model=TokenRead, responses=error_responses(401, 403, 404)
)
def revoke_token(
    token_id: str, principal: Principal = Depends(admin), session: Session = Depends(get_session)
) -> TokenRead:
    """Refuse the token from now on (401 on its next request); idempotent."""
    with session.begin():
        token = tokens.revoke_token(session, workspace_id=principal.workspace_id, token_id=token_id)
        return TokenRead.model_validate(token)


@router.post(
    "/{token_id}/rotate",
    status_code=201,
    response_model=TokenCreated,
    responses=error_responses(400, 401, 403, 404, 409, 413, 422),
)
def rotate_token(
    token_id: str,
    body: TokenRotate = Body(default_factory=TokenRotate),
    principal: Principal = Depends(admin),
    session: Session = Depends(get_session),
) -> TokenCreated:
    """A new secret with the same name and scopes; the old one works ``grace_seconds`` more."""
    with session.begin():
        token, secret = tokens.rotate_token(
            session,
            workspace_id=principal.workspace_id,
            token_id=token_id,
            grace_seconds=body.grace_seconds,
        )
        return _created(token, secret)
