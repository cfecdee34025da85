"""HTTP route of a job's server-sent event stream."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, Header
from sqlalchemy.orm import Session
from sse_starlette import EventSourceResponse, ServerSentEvent

from shipway.auth.deps import get_session, reader
from shipway.auth.service import Principal
from shipway.jobs import queueing, stream
from shipway.schemas import error_responses

router = APIRouter(tags=["jobs"])
PING_SECONDS = 15


async def _messages(job_id: str, cursor: stream.Cursor) -> AsyncIterator[ServerSentEvent]:
    async for item in stream.job_events(job_id=job_id, cursor=cursor):
        yield ServerSentEvent(
            data=json.dumps(item.data, separators=(",", ":")),
            event=item.event,
            id=item.cursor.encode(),
        )


@router.get(
    "/jobs/{job_id}/events",
    response_class=EventSourceResponse,
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "Server-sent events: `state`, `phase` and `transition` (audited "
            "events, data as in GET /jobs/{id}/audit), `progress` (`{job_id, phase, "
            "progress}`), `log` (`{job_id, line}`: build log of a publish job), then `end` "
            "(`{job_id, state, failure_reason, failure_diagnostics, result}`). Each event id "
            "is a cursor to send back as `Last-Event-ID`.",
        },
        **error_responses(401, 403, 404, 422),
    },
)
def job_event_stream(
    job_id: str,
    last_event_id: str | None = Header(
        None,
        alias="Last-Event-ID",
        max_length=64,
        description="Resume after this event (the id of the last event received)",
    ),
    principal: Principal = Depends(reader),
    session: Session = Depends(get_session),
) -> EventSourceResponse:
    """Follow a job live: replays its past events, then streams new ones until it ends."""
    cursor = stream.Cursor.parse(last_event_id)
    with session.begin():
        queueing.get_job(session, job_id=job_id, workspace_id=principal.workspace_id)
    return EventSourceResponse(
        _messages(job_id, cursor), ping=PING_SECONDS, headers={"Cache-Control": "no-cache"}
    )
