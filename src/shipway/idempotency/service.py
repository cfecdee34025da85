"""Idempotency-Key with Stripe semantics: replay the first response, refuse reuse."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shipway.errors import BadRequest, IdempotencyMismatch
from shipway.idempotency.models import IdempotencyRecord
from shipway.ids import utcnow

MAX_KEY_LENGTH = 255


def fingerprint(*, method: str, path: str, body: Any) -> str:
    """A stable hash of what makes two requests 'the same'."""
    canonical = json.dumps({"m": method, "p": path, "b": body}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def validate_key(key: str | None) -> str:
    """Check the header is present and sane."""
    if key is None or not key.strip():
        raise BadRequest(
            "this request requires an Idempotency-Key header (any unique string per operation)",
            code="idempotency_key_required",
        )
    if len(key) > MAX_KEY_LENGTH:
        raise BadRequest(
            f"Idempotency-Key is longer than {MAX_KEY_LENGTH} characters",
            code="idempotency_key_invalid",
        )
    return key.strip()


def _replay(record: IdempotencyRecord, request_fingerprint: str) -> tuple[int, dict[str, Any]]:
    if record.request_fingerprint != request_fingerprint:
        raise IdempotencyMismatch(
            "this Idempotency-Key was already used with a different request",
            idempotency_key=record.key,
        )
    return record.response_status, record.response_body


def find(session: Session, *, workspace_id: str, key: str) -> IdempotencyRecord | None:
    """The live record for (workspace, key), if any."""
    record = session.scalars(
        select(IdempotencyRecord).where(
            IdempotencyRecord.workspace_id == workspace_id, IdempotencyRecord.key == key
        )
    ).first()
    if record is not None and record.expires_at <= utcnow():
        return None
    return record


def run_once(
    session_maker: Callable[[], Session],
    *,
    workspace_id: str,
    key: str,
    request_fingerprint: str,
    ttl: timedelta,
    action: Callable[[Session], tuple[int, dict[str, Any]]],
) -> tuple[int, dict[str, Any]]:
    """Run ``action`` once per (workspace, key) and store its response in the same transaction.

    Concurrent duplicates race on the unique (workspace, key) row: the loser's
    transaction is rolled back and it answers with the winner's stored response.
    Errors raised by ``action`` store nothing, so a corrected retry may reuse the key.
    """
    with session_maker() as session, session.begin():
        existing = find(session, workspace_id=workspace_id, key=key)
        if existing is not None:
            return _replay(existing, request_fingerprint)
    try:
        with session_maker() as session, session.begin():
            session.execute(
                delete(IdempotencyRecord).where(
                    IdempotencyRecord.workspace_id == workspace_id,
                    IdempotencyRecord.key == key,
                    IdempotencyRecord.expires_at <= utcnow(),
                )
            )
            record = IdempotencyRecord(
                workspace_id=workspace_id,
                key=key,
                request_fingerprint=request_fingerprint,
                response_status=0,
                response_body={},
                created_at=utcnow(),
                expires_at=utcnow() + ttl,
            )
            session.add(record)
            session.flush()  # claims the key now; a concurrent duplicate waits here
            status, body = action(session)
            record.response_status = status
            record.response_body = body
            return status, body
    except IntegrityError:
        with session_maker() as session, session.begin():
            winner = find(session, workspace_id=workspace_id, key=key)
            if winner is None:
                raise
            return _replay(winner, request_fingerprint)
