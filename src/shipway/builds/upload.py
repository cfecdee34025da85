"""Publish from an HTTP upload: stage the archive, then submit the publish once per key.

The source is staged (checked and unpacked) before the transaction, so a bad archive
costs no row; the staged copy is dropped afterwards whatever happened, and a version's
source moved into place by a transaction that did not win (rolled back, replayed or
lost a race to a duplicate) is discarded: no stray files.
"""

from __future__ import annotations

import hashlib
from typing import BinaryIO

from sqlalchemy.orm import Session

from shipway.builds.schemas import PublishForm, PublishResponse
from shipway.builds.service import publish
from shipway.config import get_settings
from shipway.db import transaction
from shipway.deployments.service import get_deployment
from shipway.idempotency.service import validate_key
from shipway.jobs.submit import Accepted, Defer, Idempotent, Submitted, submit
from shipway.sources.store import LocalSourceStore, Staged, source_store, upload_limits
from shipway.versions.views import version_full


def publish_upload(
    *,
    workspace_id: str,
    deployment_id: str,
    form: PublishForm,
    source: BinaryIO,
    idempotency_key: str | None,
    actor: str,
    defer: Defer | None = None,
) -> Submitted:
    """Publish an uploaded source archive: 202 with the new version and its build job."""
    key = validate_key(idempotency_key)
    with transaction() as session:  # 404 before spending time on the upload
        get_deployment(session, deployment_id=deployment_id, workspace_id=workspace_id)
    store = source_store()
    staged = store.stage(source, max_bytes=get_settings().max_upload_bytes, limits=upload_limits())
    moved: list[str] = []

    def action(session: Session) -> Accepted:
        result = publish(
            session,
            workspace_id=workspace_id,
            deployment_id=deployment_id,
            staged=staged,
            form=form,
            store=store,
            actor=actor,
        )
        moved.append(result.version.id)
        version = version_full(result.version, releases=[], environment="production")
        return Accepted(
            job=result.job, answer=lambda job: PublishResponse(version=version, job=job)
        )

    try:
        submitted = submit(
            workspace_id=workspace_id,
            action=action,
            request=Idempotent(key=key, fingerprint=_fingerprint(deployment_id, staged, form)),
            defer=defer,
        )
    except BaseException:
        _discard(store, moved, keep=None)  # the transaction rolled back
        raise
    finally:
        store.drop_staged(staged)
    _discard(store, moved, keep=submitted.body.get("version", {}).get("id"))
    return submitted


def _fingerprint(deployment_id: str, staged: Staged, form: PublishForm) -> str:
    """Same deployment, same archive bytes, same form fields: the same publish."""
    fields = form.model_dump_json(exclude={"source"})
    return hashlib.sha256(f"{deployment_id}|{staged.sha256}|{fields}".encode()).hexdigest()


def _discard(store: LocalSourceStore, moved: list[str], *, keep: str | None) -> None:
    for version_id in moved:
        if version_id != keep:
            store.discard(version_id)
