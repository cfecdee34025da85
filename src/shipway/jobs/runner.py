"""Run one job: claim it, heartbeat while its handler works, record how it ended."""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, OperationalError

from shipway.config import get_settings
from shipway.db import get_engine, one_statement, session_factory
from shipway.errors import Conflict
from shipway.jobs import handlers, lease
from shipway.jobs.cancel import cancelled_diagnostics
from shipway.jobs.context import JobCancelled, JobContext, JobFailed, LeaseLost
from shipway.jobs.dispatch import dispatch
from shipway.jobs.lines import next_in_line
from shipway.jobs.machine import JOB
from shipway.jobs.models import Job
from shipway.states import refuse
from shipway.storage import is_exhaustion, record, storage_diagnostics

log = logging.getLogger(__name__)
_job_listeners: list[Callable[[str | None], None]] = []


def on_current_job(listener: Callable[[str | None], None]) -> None:
    """Call ``listener(job_id)`` when this process starts running a job, ``(None)`` after."""
    if listener not in _job_listeners:
        _job_listeners.append(listener)


def _notify(job_id: str | None) -> None:
    for listener in _job_listeners:
        try:
            listener(job_id)
        except Exception:  # observers never break a job
            log.exception("current-job listener failed")


def worker_identity() -> str:
    """hostname/pid of this process, plus a nonce so each claim has its own owner."""
    return f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(3)}"


class _LeaseKeeper:
    """One daemon thread per process renews the lease of every job this process runs.

    Starting a thread per job cost about a millisecond on a busy 2-core machine (the
    starter waits until the new thread has run); the shared thread starts once.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, tuple[str, Any, threading.Event]] = {}
        self._pid: int | None = None

    def hold(self, job_id: str, owner: str, maker: Any) -> threading.Event:
        """Renew ``job_id``'s lease until ``release``; the event is set if it was lost."""
        lost = threading.Event()
        with self._lock:
            self._jobs[job_id] = (owner, maker, lost)
            if self._pid != os.getpid():  # first job of this process (or of a forked child)
                self._pid = os.getpid()
                threading.Thread(target=self._run, name="lease-keeper", daemon=True).start()
        return lost

    def release(self, job_id: str) -> None:
        """Stop renewing ``job_id``'s lease."""
        with self._lock:
            self._jobs.pop(job_id, None)

    def _run(self) -> None:
        while True:
            time.sleep(get_settings().heartbeat_seconds)  # read each time: tests change it
            with self._lock:
                held = list(self._jobs.items())
            for job_id, (owner, maker, lost) in held:
                self._renew(job_id, owner, maker, lost)

    def _renew(self, job_id: str, owner: str, maker: Any, lost: threading.Event) -> None:
        try:
            with maker() as session, session.begin():
                renewed = lease.heartbeat(session, job_id=job_id, owner=owner)
        except OperationalError:
            log.warning("heartbeat of %s failed: database unreachable", job_id)
            return
        if not renewed:
            lost.set()
            self.release(job_id)


_leases = _LeaseKeeper()


def run_job(job_id: str, *, owner: str | None = None) -> str | None:
    """Claim and run ``job_id``; returns its final state, or None if not run here."""
    maker = session_factory()
    owner = owner or worker_identity()
    try:
        claim = _claim(maker, job_id, owner)
    except IntegrityError:  # another job of its line was claimed at the same instant
        return None
    if claim is None:
        return None
    lost = _leases.hold(job_id, owner, maker)
    _notify(job_id)
    ctx = JobContext(
        job_id=job_id,
        owner=owner,
        attempt=claim.attempt,
        session_maker=maker,
        lease_lost=lost.is_set,
        params=claim.params,
    )
    try:
        state = _execute(ctx, claim.kind, maker)
    finally:
        _leases.release(job_id)
        _notify(None)
    if claim.serial_key is not None:  # only a job in a serial line has a next one
        _dispatch_next(maker, job_id)
    return state


def _postgresql() -> bool:
    return get_engine().dialect.name == "postgresql"


def _claim(maker: Any, job_id: str, owner: str) -> lease.Claim | None:
    """The claim: one statement with its Event on a Core connection in autocommit on
    PostgreSQL (no ORM session); the UPDATE and the Event in a session elsewhere."""
    if _postgresql():
        with one_statement() as conn:
            return lease.claim_logged(conn, job_id=job_id, owner=owner)
    with maker() as session, session.begin():
        return lease.claim(session, job_id=job_id, owner=owner)


def _execute(ctx: JobContext, kind: str, maker: Any) -> str | None:
    try:
        result = handlers.handler_for(kind)(ctx)
    except JobCancelled as stop:
        diagnostics = stop.diagnostics or cancelled_diagnostics("operator")
        return _end(maker, ctx, "cancelled", stop.reason, diagnostics)
    except JobFailed as failure:
        return _end(maker, ctx, "failed", failure.reason, failure.diagnostics)
    except LeaseLost:
        log.warning("job %s: lease lost, leaving it to its new owner", ctx.job_id)
        return None
    except OperationalError as error:
        # The database is unreachable (or full): leave the job running; its lease expires
        # and the reaper requeues it once the database is back.
        if is_exhaustion(error):
            record("database", error)
        else:
            log.exception("job %s: database unreachable", ctx.job_id)
        return None
    except Exception as error:  # a bug: fail with evidence rather than retry forever
        if is_exhaustion(error):  # not a bug: the disk is full, and the job says so
            record("job", error)
            return _end(maker, ctx, "failed", "insufficient_storage", storage_diagnostics(error))
        log.exception("job %s crashed", ctx.job_id)
        return _end(maker, ctx, "failed", "internal_error", _internal_error(error))
    return _end(maker, ctx, "succeeded", None, None, result=result)


def _end(
    maker: Any,
    ctx: JobContext,
    state: str,
    reason: str | None,
    diagnostics: dict[str, Any] | None,
    result: dict[str, Any] | None = None,
) -> str | None:
    if state == "succeeded" and _postgresql():  # one statement; a failure compensates
        return _succeeded(maker, ctx, result)
    try:
        with maker() as session, session.begin():
            lease.finish(
                session,
                job_id=ctx.job_id,
                owner=ctx.owner,
                state=state,
                reason=reason or state,
                result=result,
                failure_reason=reason,
                failure_diagnostics=diagnostics,
            )
            if state != "succeeded":
                job = session.get(Job, ctx.job_id)
                assert job is not None
                handlers.compensate(session, job, reason or state, diagnostics)
    except Conflict:
        log.warning("job %s: could not record %s, lease no longer held", ctx.job_id, state)
        return None
    return state


def _succeeded(maker: Any, ctx: JobContext, result: dict[str, Any] | None) -> str | None:
    """PostgreSQL: a success recorded in one statement on a Core connection in autocommit."""
    with one_statement() as conn:
        done = lease.finish_logged(
            conn, job_id=ctx.job_id, owner=ctx.owner, state="succeeded", result=result
        )
    if done:
        return "succeeded"
    try:  # nothing written: say why, as lease.finish does
        with maker() as session:
            refuse(session, JOB, subject_id=ctx.job_id, from_state="running", to_state="succeeded")
    except Conflict:
        log.warning("job %s: could not record succeeded, lease no longer held", ctx.job_id)
    return None


def _internal_error(error: Exception) -> dict[str, Any]:
    return {
        "title": "Internal error",
        "description": f"shipway hit an unexpected error: {type(error).__name__}: {error}",
        "action": "This is a shipway bug; report it with the evidence below.",
        "evidence": {"traceback": traceback.format_exc().splitlines()[-12:]},
    }


def _dispatch_next(maker: Any, job_id: str) -> None:
    """Hand the next job waiting on the same (deployment, environment) to the broker."""
    try:
        with maker() as session:
            serial_key = session.scalar(select(Job.serial_key).where(Job.id == job_id))
            waiting = next_in_line(session, serial_key=serial_key) if serial_key else None
        if waiting:
            dispatch([waiting], session_maker=maker)
    except Exception:  # the relay re-sends later anyway
        log.exception("could not dispatch the job after %s", job_id)
