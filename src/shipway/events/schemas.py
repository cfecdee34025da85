"""Event response model: one audited transition."""

from __future__ import annotations

from typing import Any

from shipway.schemas import ReadModel, Timestamp


class EventRead(ReadModel):
    """One audited transition."""

    id: int
    subject_type: str
    subject_id: str
    from_state: str | None
    to_state: str | None
    reason: str
    actor: str
    job_id: str | None
    deployment_id: str | None
    data: dict[str, Any]
    created_at: Timestamp
