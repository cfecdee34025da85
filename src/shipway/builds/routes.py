"""HTTP routes of publish (source upload) and build logs."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Depends, File, Form, Header, Query, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from shipway.auth.deps import get_session, reader, writer
from shipway.auth.service import Principal
from shipway.builds.schemas import PublishForm, PublishResponse
from shipway.builds.upload import publish_upload
from shipway.catalog.models import Version
from shipway.db import session_factory
from shipway.schemas import error_responses
from shipway.sources.store import source_store
from shipway.versions.service import get_version

router = APIRouter(tags=["versions"])
FOLLOW_POLL_SECONDS = 0.25


@router.post(
    "/deployments/{deployment_id}/versions",
    status_code=202,
    response_model=PublishResponse,
    responses=error_responses(400, 401, 403, 404, 413, 415, 422, 507),
)
def publish_version(
    deployment_id: str,
    background: BackgroundTasks,
    form: Annotated[PublishForm, Form()],
    source: Annotated[UploadFile, File(description="Source archive: tar, tar.gz or zip")],
    idempotency_key: str | None = Header(
        None, alias="Idempotency-Key", description="Required; same key + same upload replays"
    ),
    principal: Principal = Depends(writer),
) -> JSONResponse:
    """Publish: upload a source archive; a worker builds it into an immutable version."""
    submitted = publish_upload(
        workspace_id=principal.workspace_id,
        deployment_id=deployment_id,
        form=form,
        source=source.file,
        idempotency_key=idempotency_key,
        actor=principal.actor,
        defer=background.add_task,
    )
    return JSONResponse(status_code=submitted.status, content=submitted.body)


@router.get(
    "/deployments/{deployment_id}/versions/{version_id}/build-log",
    response_class=PlainTextResponse,
    responses={
        200: {"content": {"text/plain": {}}, "description": "The build log so far"},
        **error_responses(401, 403, 404),
    },
)
def build_log(
    deployment_id: str,
    version_id: str,
    follow: bool = Query(False, description="Stream until the build ends"),
    principal: Principal = Depends(reader),
    session: Session = Depends(get_session),
) -> Any:
    """The build log (plain text); with ``?follow=1`` it streams until the build ends."""
    with session.begin():
        get_version(
            session,
            version_id=version_id,
            workspace_id=principal.workspace_id,
            deployment_id=deployment_id,
        )
    path = source_store().build_log(version_id)
    if not follow:
        text = path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
        return PlainTextResponse(text)
    return StreamingResponse(_follow(version_id, path), media_type="text/plain; charset=utf-8")


def _building(version_id: str) -> bool:
    with session_factory()() as session:
        state = session.scalar(select(Version.state).where(Version.id == version_id))
    return state in ("created", "building")


async def _follow(version_id: str, path: Any) -> AsyncIterator[bytes]:
    offset, inode = 0, None
    while True:
        still_building = await asyncio.to_thread(_building, version_id)
        if path.exists():
            with open(path, "rb") as handle:
                facts = os.fstat(handle.fileno())
                if facts.st_ino != inode or facts.st_size < offset:  # a retry restarted the log
                    offset, inode = 0, facts.st_ino
                handle.seek(offset)
                chunk = handle.read()
            if chunk:
                offset += len(chunk)
                yield chunk
        if not still_building:
            return
        await asyncio.sleep(FOLLOW_POLL_SECONDS)
