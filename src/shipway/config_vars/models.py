"""One version of an environment's config: every var, the secrets encrypted."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from shipway.crypto import EncryptedText
from shipway.db import Base, JSONType, UTCDateTime
from shipway.ids import utcnow


class ConfigVersion(Base):
    """The whole config of (deployment, environment) after one change; never updated.

    ``plain`` holds readable values; ``secrets`` is the JSON of the secret values,
    encrypted at rest (``EncryptedText``) and loaded only when asked for (deferred):
    listing the config never decrypts it. ``keys`` describes every var (secret or not,
    the version that last changed it, when and by whom); ``changes`` what this version
    changed (names only). A release records the number it runs with.
    """

    __tablename__ = "config_versions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    workspace_id: Mapped[str] = mapped_column(ForeignKey("workspaces.id"), index=True)
    deployment_id: Mapped[str] = mapped_column(ForeignKey("deployments.id"))
    environment: Mapped[str] = mapped_column(String(63))
    number: Mapped[int] = mapped_column(Integer)
    plain: Mapped[dict[str, str]] = mapped_column(JSONType, default=dict)
    secrets: Mapped[str | None] = mapped_column(EncryptedText(), deferred=True)
    keys: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    changes: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (
        UniqueConstraint("deployment_id", "environment", "number", name="uq_config_versions_env"),
    )

    def __repr__(self) -> str:  # never a value
        return f"ConfigVersion({self.deployment_id!r}, {self.environment!r}, {self.number})"
