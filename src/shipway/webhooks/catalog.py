"""Which audited transitions are webhook events, and what their payloads say."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, get_args

from sqlalchemy.orm import Session

from shipway.catalog.models import Release, Version
from shipway.events.models import Event
from shipway.ids import rfc3339

EventType = Literal[
    "version.ready",
    "version.failed",
    "release.active",
    "release.failed",
    "release.unhealthy",
    "release.rolled_back",
    "canary.step",
    "canary.aborted",
    "canary.promoted",
    "job.stuck",
]
SUBSCRIBABLE: tuple[str, ...] = get_args(EventType)
EVENT_TYPES = (*SUBSCRIBABLE, "webhook.test")  # webhook.test: sent on request only
# (subject_type, to_state) of an Event → webhook event type (a state change only).
TRANSITIONS = {
    ("version", "ready"): "version.ready",
    ("version", "failed"): "version.failed",
    ("release", "ACTIVE"): "release.active",
    ("release", "FAILED"): "release.failed",
    ("release", "UNHEALTHY"): "release.unhealthy",
    ("release", "ROLLED_BACK"): "release.rolled_back",
    ("canary", "step_started"): "canary.step",
    ("canary", "aborted"): "canary.aborted",
    ("canary", "completed"): "canary.promoted",
}


def envelope(event_type: str, when: datetime, data: dict[str, Any]) -> dict[str, Any]:
    """The Standard Webhooks payload shape: type, timestamp, data."""
    return {"type": event_type, "timestamp": rfc3339(when), "data": data}


def event_type_of(event: Event) -> str | None:
    """The webhook event type of an audited transition, or None if it is not one."""
    if event.from_state == event.to_state and event.subject_type != "canary":
        return None  # notes on a state (drain timeouts, refusals), not changes
    return TRANSITIONS.get((event.subject_type, event.to_state or ""))


def payload_of(session: Session, event: Event, event_type: str) -> dict[str, Any]:
    """What a receiver needs: ids, environment, version number, states, reason."""
    data: dict[str, Any] = {
        "event_id": event.id,
        "deployment_id": event.deployment_id,
        "job_id": event.job_id,
        "from_state": event.from_state,
        "to_state": event.to_state,
        "reason": event.reason,
        "actor": event.actor,
    }
    if event.subject_type == "version":
        version = session.get(Version, event.subject_id)
        data["version_id"] = event.subject_id
        if version is not None:
            data["version_number"] = version.version_number
            data["failure_reason"] = version.failure_reason
    else:
        release = session.get(Release, event.subject_id)
        data["release_id"] = event.subject_id
        if release is not None:
            data["environment"] = release.environment
            data["version_id"] = release.version_id
            data["failure_reason"] = release.failure_reason
            version = session.get(Version, release.version_id)
            data["version_number"] = version.version_number if version else None
        if event.subject_type == "canary":
            data["canary"] = event.data
    return envelope(event_type, event.created_at, data)
