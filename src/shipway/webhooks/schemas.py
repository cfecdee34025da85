"""Request and answer bodies of the webhook routes."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from shipway.schemas import ReadModel, Timestamp
from shipway.webhooks.catalog import EventType

URL = Field(
    max_length=2000,
    description="http(s) URL receiving POSTs; loopback and private addresses are refused "
    "unless SHIPWAY_WEBHOOK_ALLOW_PRIVATE=true",
    examples=["https://hooks.example.com/shipway"],
)
WEEK = 7 * 86400


class WebhookCreate(BaseModel):
    """A new endpoint of the caller's workspace."""

    model_config = ConfigDict(extra="forbid")

    url: str = URL
    event_types: list[EventType] = Field(
        min_length=1, max_length=20, description="The event types sent to this endpoint"
    )
    description: str = Field(default="", max_length=200)
    enabled: bool = True


class WebhookUpdate(BaseModel):
    """What to change (fields left out stay as they are)."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(default=None, max_length=2000)
    event_types: list[EventType] | None = Field(default=None, min_length=1, max_length=20)
    description: str | None = Field(default=None, max_length=200)
    enabled: bool | None = None


class WebhookRotate(BaseModel):
    """How long the old secret keeps signing (a second signature) after rotation."""

    model_config = ConfigDict(extra="forbid")

    overlap_seconds: int = Field(
        default=86400,
        ge=0,
        le=WEEK,
        description="0: the old secret stops at once; else both sign for this long",
    )


class WebhookRead(ReadModel):
    """An endpoint; its secret is never answered back (only at create and rotate)."""

    id: str
    url: str
    description: str
    event_types: list[str]
    enabled: bool
    previous_secret_expires_at: Timestamp | None = Field(
        description="Until then requests carry a second signature, by the previous secret"
    )
    created_by: str
    created_at: Timestamp
    updated_at: Timestamp


class WebhookCreated(WebhookRead):
    """An endpoint with its signing secret, shown only this once."""

    secret: str = Field(description="whsec_<base64>: verify webhook-signature with it")


class WebhookList(BaseModel):
    """The workspace's endpoints."""

    data: list[WebhookRead]


class AttemptRead(ReadModel):
    """One request of a delivery."""

    outcome: str = Field(description="succeeded (2xx) or failed")
    status_code: int | None
    error: str | None = Field(description="Error class and message when no answer came")
    response_body: str = Field(description="The first 1 KiB of the answer")
    duration_ms: float
    trigger: str = Field(description="auto, or redeliver (asked through the API)")
    started_at: Timestamp


class DeliveryRead(ReadModel):
    """One message to the endpoint (its id is the webhook-id header) and its attempts."""

    id: str
    event_type: str
    state: str = Field(description="pending, succeeded or failed (gave up)")
    attempts: int = Field(description="Attempts in the current round")
    next_attempt_at: Timestamp | None
    deadline_at: Timestamp
    last_status_code: int | None
    last_error: str | None
    created_at: Timestamp
    delivered_at: Timestamp | None
    payload: dict[str, Any]
    attempt_log: list[AttemptRead] = Field(default_factory=list)


class DeliveryList(BaseModel):
    """Deliveries, newest first."""

    data: list[DeliveryRead]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page")
