"""Webhook endpoints, their deliveries (one per event and endpoint), each attempt, the cursor."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from shipway.crypto import EncryptedText
from shipway.db import Base, JSONType, UTCDateTime
from shipway.ids import utcnow


class WebhookEndpoint(Base):
    """A URL of a workspace that receives the event types it subscribes to, signed.

    ``secret`` (``whsec_…``) signs every request; after a rotation ``previous_secret``
    signs too until ``previous_secret_expires_at``. Both are encrypted at rest and never
    answered back (the secret only at create and rotate).
    """

    __tablename__ = "webhook_endpoints"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id"), index=True)
    url: Mapped[str] = mapped_column(Text)
    description: Mapped[str] = mapped_column(String(200), default="")
    event_types: Mapped[list[str]] = mapped_column(JSONType, default=list)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    secret: Mapped[str] = mapped_column(EncryptedText())
    previous_secret: Mapped[str | None] = mapped_column(EncryptedText())
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_by: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    def __repr__(self) -> str:  # never the secrets
        return f"WebhookEndpoint({self.id!r}, {self.url!r})"


class WebhookDelivery(Base):
    """One message to one endpoint; its id is the ``webhook-id`` header (same on retries).

    ``state``: pending (an attempt is due at ``next_attempt_at``), succeeded, or failed
    (gave up: ``attempts`` reached the limit or ``deadline_at`` passed). ``source_key``
    makes the outbox idempotent: one delivery per endpoint and source event.
    """

    __tablename__ = "webhook_deliveries"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id"))
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("webhook_endpoints.id"))
    event_type: Mapped[str] = mapped_column(String(40))
    source_key: Mapped[str] = mapped_column(String(120))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType)
    state: Mapped[str] = mapped_column(String(20), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # in the current round
    trigger: Mapped[str] = mapped_column(String(20), default="auto")  # of the round: or redeliver
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    deadline_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        UniqueConstraint("endpoint_id", "source_key", name="uq_webhook_deliveries_source"),
        Index("ix_webhook_deliveries_due", "state", "next_attempt_at"),
        Index("ix_webhook_deliveries_endpoint", "endpoint_id", "created_at"),
    )


class WebhookAttempt(Base):
    """One HTTP request of a delivery: status code, truncated answer or error class, time."""

    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    delivery_id: Mapped[str] = mapped_column(ForeignKey("webhook_deliveries.id"), index=True)
    outcome: Mapped[str] = mapped_column(String(20))  # succeeded | failed
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(String(200))
    response_body: Mapped[str] = mapped_column(Text, default="")
    duration_ms: Mapped[float] = mapped_column(Float, default=0.0)
    trigger: Mapped[str] = mapped_column(String(20), default="auto")  # auto | redeliver
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class WebhookCursor(Base):
    """How far the outbox has read the audit trail (one row, ``name='events'``)."""

    __tablename__ = "webhook_cursor"

    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    last_event_id: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
