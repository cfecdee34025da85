"""Request and answer bodies of the token routes."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from shipway.schemas import ReadModel, Timestamp

TEN_YEARS = 10 * 366 * 86400
WEEK = 7 * 86400


class TokenCreate(BaseModel):
    """A new token of the caller's workspace."""

    model_config = ConfigDict(extra="forbid")

    scopes: list[str] = Field(
        min_length=1,
        max_length=3,
        description="deployments:read, deployments:write, admin",
        examples=[["deployments:write"]],
    )
    name: str = Field(default="", max_length=200, description="A label, e.g. ci-main")
    expires_in_seconds: int | None = Field(
        default=None,
        ge=60,
        le=TEN_YEARS,
        description="The token is refused (401) this long after creation; null: never expires",
    )


class TokenRotate(BaseModel):
    """How long the old secret keeps working after the new one is issued."""

    model_config = ConfigDict(extra="forbid")

    grace_seconds: int = Field(
        default=0,
        ge=0,
        le=WEEK,
        description="0: the old token is revoked at once; else it works this much longer "
        "(time to roll the new secret out)",
    )


class TokenRead(ReadModel):
    """A token's metadata; its secret is never answered back (only at create and rotate)."""

    id: str
    name: str
    scopes: list[str]
    created_at: Timestamp
    expires_at: Timestamp | None = Field(description="Refused from then on; null: never")
    revoked_at: Timestamp | None = Field(
        description="Refused from then on (may lie ahead: a rotation's grace period)"
    )
    last_used_at: Timestamp | None = Field(
        description="Last authenticated request, to within SHIPWAY_TOKEN_LAST_USED_SECONDS"
    )
    rotated_to: str | None = Field(description="The token that replaced this one on rotate")


class TokenCreated(TokenRead):
    """A new token with its secret, shown only this once."""

    secret: str = Field(description="Send as 'Authorization: Bearer <secret>'")


class TokenList(BaseModel):
    """The workspace's tokens, newest first."""

    data: list[TokenRead]
