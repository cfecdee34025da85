"""The outbox relay and reaper: send queued jobs to Celery, requeue lost ones."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from shipway.config import get_settings
from shipway.db import session_factory
from shipway.errors import InvalidTransition
from shipway.ids import utcnow
from shipway.jobs import handlers, service
from shipway.jobs.models import Job
from shipway.states import JOB, transition

log = logging.getLogger(__name__)
TASK_NAME = "shipway.run_job"


def send_to_broker(job_id: str, queue: str) -> None:
    """Publish one task message (the job id only) to the Celery broker."""
    from workers.celery_app import current_celery

    current_celery().send_task(TASK_NAME, args=[job_id], queue=queue, retry=False)


# After a failed send, request handlers leave new jobs to the relay for this long instead of
# each waiting out a connection attempt (about 2 s) while the broker is down.
BROKER_BACKOFF_SECONDS = 5.0
_broker_down_until = 0.0


def dispatch_after_commit(jobs: Sequence[tuple[str, str]]) -> int:
    """``dispatch`` for API requests: skipped while the broker was just seen down.

    The jobs stay queued and never dispatched, so the relay sends them on its next
    pass; the API's threads and connections are not held by a dead broker.
    """
    if time.monotonic() < _broker_down_until:
        return 0
    return dispatch(jobs)


def dispatch(
    jobs: Sequence[tuple[str, str]],
    *,
    session_maker: Callable[[], Session] | None = None,
) -> int:
    """Send (id, queue) pairs to the broker; marks those sent. Never raises."""
    global _broker_down_until
    maker = session_maker or session_factory()
    sent: list[str] = []
    for job_id, queue in jobs:
        try:
            send_to_broker(job_id, queue)
        except Exception as error:  # broker down: the relay retries later
            _broker_down_until = time.monotonic() + BROKER_BACKOFF_SECONDS
            log.warning("broker unreachable, %d job(s) left for the relay: %s", len(jobs), error)
            break
        sent.append(job_id)
    if sent:
        try:
            with maker() as session, session.begin():
                service.mark_dispatched(session, job_ids=sent, now=utcnow())
        except OperationalError:
            log.warning("could not mark %d job(s) dispatched", len(sent))
    return len(sent)


@dataclass
class RelayReport:
    """What one relay pass did."""

    dispatched: int = 0
    requeued: int = 0
    failed: int = 0


def reap_once(session_maker: Callable[[], Session]) -> RelayReport:
    """Requeue or fail jobs whose lease expired; fail queued jobs past their deadline."""
    report = RelayReport()
    now = utcnow()
    with session_maker() as session:
        expired = service.expired_leases(session, now=now)
        overdue = service.deadline_passed_queued(session, now=now)
    for job in expired:
        with session_maker() as session, session.begin():
            outcome = service.reap(session, job=job, now=now)
            if outcome == "failed":
                fresh = session.get(Job, job.id)
                assert fresh is not None
                handlers.compensate(session, fresh, "worker_lost", fresh.failure_diagnostics)
        report.requeued += outcome == "queued"
        report.failed += outcome == "failed"
    for job in overdue:
        diagnostics = {
            "title": "Deadline passed while queued",
            "description": "No worker finished this job before its deadline.",
            "action": "Check that workers are running for the job's queue (GET /api/v1/queue).",
            "evidence": {"queue": job.queue, "deadline_at": str(job.deadline_at)},
        }
        try:
            with session_maker() as session, session.begin():
                transition(
                    session,
                    JOB,
                    subject_id=job.id,
                    from_state="queued",
                    to_state="failed",
                    reason="deadline_exceeded",
                    actor="reaper",
                    values={
                        "finished_at": now,
                        "failure_reason": "deadline_exceeded",
                        "failure_diagnostics": diagnostics,
                    },
                )
                handlers.compensate(session, job, "deadline_exceeded", diagnostics)
                report.failed += 1
        except InvalidTransition:
            continue
    return report


def relay_once(session_maker: Callable[[], Session] | None = None) -> RelayReport:
    """One pass: reap, then dispatch whatever is due."""
    maker = session_maker or session_factory()
    report = reap_once(maker)
    with maker() as session:
        due = service.due_for_dispatch(session, now=utcnow())
    report.dispatched = dispatch(due, session_maker=maker)
    return report


def _watch_router() -> None:
    from shipway.releases.reconcile import watch_router

    try:
        watch_router()
    except Exception:
        log.exception("router watch failed")


def _collect_images() -> None:
    from shipway.releases.retention import collect_once

    try:
        collect_once()
    except Exception:
        log.exception("image garbage collection failed")


def start_policy_loops(stop: threading.Event) -> list[threading.Thread]:
    """The health monitor and the auto-promote scan, each in a thread of its own.

    A probe round waits on HTTP timeouts; in threads it never delays dispatching.
    """
    from shipway.releases import autopromote, monitor

    threads = [
        threading.Thread(target=monitor.run_forever, args=(stop,), name="monitor", daemon=True),
        threading.Thread(
            target=autopromote.run_forever, args=(stop,), name="auto-promote", daemon=True
        ),
    ]
    for thread in threads:
        thread.start()
    return threads


def run_forever(stop: threading.Event | None = None) -> None:
    """Relay and reap every ``relay_interval_seconds`` until ``stop`` is set.

    Also runs the health monitor and auto-promote policies (in their own threads).
    """
    stop = stop or threading.Event()
    interval = get_settings().relay_interval_seconds
    start_policy_loops(stop)
    maker = session_factory()
    next_gc = time.monotonic() + get_settings().gc_interval_seconds
    log.info("relay started (every %.1fs)", interval)
    while not stop.is_set():
        try:
            report = relay_once(maker)
            if report.dispatched or report.requeued or report.failed:
                log.info("relay: %s", report)
            _watch_router()
            if time.monotonic() >= next_gc:
                next_gc = time.monotonic() + get_settings().gc_interval_seconds
                _collect_images()
        except OperationalError as error:
            log.warning("relay: database unreachable: %s", error)
        except Exception:
            log.exception("relay pass failed")
        stop.wait(interval)
