"""HTTP routes of publish (source upload) and build logs."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Depends, File, Form, Header, Query, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from shipway.auth.deps import get_session, reader, writer
from shipway.auth.service import Principal
from shipway.builds import service
from shipway.builds.schemas import PublishForm, PublishResponse
from shipway.config import get_settings
from shipway.db import session_factory
from shipway.deployments.service import get_deployment
from shipway.idempotency import service as idempotency
from shipway.jobs import relay
from shipway.jobs import service as jobs
from shipway.jobs.schemas import JobRead
from shipway.schemas import error_responses
from shipway.sources.store import source_store, upload_limits
from shipway.versions.models import Version
from shipway.versions.schemas import VersionFull
from shipway.versions.service import get_version

router = APIRouter(tags=["versions"])
FOLLOW_POLL_SECONDS = 0.25


@router.post(
    "/deployments/{deployment_id}/versions",
    status_code=202,
    response_model=PublishResponse,
    responses=error_responses(400, 401, 403, 404, 413, 415, 422),
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
    session: Session = Depends(get_session),
) -> JSONResponse:
    """Publish: upload a source archive; a worker builds it into an immutable version."""
    key = idempotency.validate_key(idempotency_key)
    with session.begin():  # 404 before spending time on the upload
        get_deployment(session, deployment_id=deployment_id, workspace_id=principal.workspace_id)
    settings = get_settings()
    store = source_store()
    staged = store.stage(source.file, max_bytes=settings.max_upload_bytes, limits=upload_limits())
    created: list[tuple[str, str]] = []
    moved: list[str] = []

    def action(tx: Session) -> tuple[int, dict[str, Any]]:
        result = service.publish(
            tx,
            workspace_id=principal.workspace_id,
            deployment_id=deployment_id,
            staged=staged,
            form=form,
            store=store,
            actor=principal.actor,
        )
        moved.append(result.version.id)
        created.append((result.job.id, result.job.queue))
        job = JobRead.model_validate(result.job)
        job.queue_position = jobs.queue_position(tx, job=result.job)
        answer = PublishResponse(version=_full(result.version), job=job)
        return 202, answer.model_dump(mode="json")

    fingerprint = hashlib.sha256(
        f"{deployment_id}|{staged.sha256}|{form.model_dump_json(exclude={'source'})}".encode()
    ).hexdigest()
    try:
        status, payload = idempotency.run_once(
            session_factory(),
            workspace_id=principal.workspace_id,
            key=key,
            request_fingerprint=fingerprint,
            ttl=timedelta(hours=settings.idempotency_ttl_hours),
            action=action,
        )
    except BaseException:
        for version_id in moved:  # the transaction rolled back: leave no stray files
            store.discard(version_id)
        raise
    finally:
        store.drop_staged(staged)
    if created:
        background.add_task(relay.dispatch_after_commit, created)
    else:
        for version_id in moved:
            store.discard(version_id)
    return JSONResponse(status_code=status, content=payload)


def _full(version: Version) -> VersionFull:
    from shipway.versions.routes import version_full

    return version_full(version, releases=[], environment="production")


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
