"""This process's entry in the worker registry: register, heartbeat, note the current job."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence

from sqlalchemy.orm import Session

from shipway.config import get_settings
from shipway.db import session_factory
from shipway.workers_registry import service

log = logging.getLogger(__name__)
# How long a job change waits before it is written (see Presence.run).
CURRENT_JOB_DEBOUNCE_SECONDS = 0.2


class Presence(threading.Thread):
    """Registers this process, then heartbeats every ``heartbeat_seconds`` until stopped.

    A daemon thread: it never blocks the job the process runs, and a database outage only
    delays registration or heartbeats (the worker then looks dead, which is the truth as
    far as the database can tell).
    """

    def __init__(
        self,
        *,
        queues: Sequence[str],
        node: str | None = None,
        session_maker: Callable[[], Session] | None = None,
    ) -> None:
        super().__init__(name="worker-presence", daemon=True)
        self.queues, self.node = list(queues), node
        self.maker = session_maker or session_factory()
        self.hostname, self.pid = socket.gethostname(), os.getpid()
        self.worker_id: str | None = None
        self.current_job_id: str | None = None
        self.written_job_id: str | None = None
        self.stopped = threading.Event()
        self.wake = threading.Event()
        self.registered = threading.Event()

    def run(self) -> None:
        """Register (retrying), then heartbeat until stopped; wakes early on a job change.

        A job change is written after ``CURRENT_JOB_DEBOUNCE_SECONDS`` and only if the
        current job still differs from the one last written: a burst of short jobs costs
        one write, not two per job, and a job that runs longer shows up at once.
        """
        interval = get_settings().heartbeat_seconds
        while not self.stopped.is_set():
            try:
                self._beat()
            except Exception as error:  # database unreachable: try again next interval
                log.warning("worker heartbeat failed: %s", error)
            self._wait_for_change(interval)

    def _wait_for_change(self, interval: float) -> None:
        deadline = time.monotonic() + interval
        while not self.stopped.is_set():
            left = deadline - time.monotonic()
            if left <= 0 or not self.wake.wait(left):
                return
            self.wake.clear()
            self.stopped.wait(min(CURRENT_JOB_DEBOUNCE_SECONDS, interval))
            if self.current_job_id != self.written_job_id:
                return

    def _beat(self) -> None:
        with self.maker() as session, session.begin():
            current_job_id = self.current_job_id
            if self.worker_id is not None and service.heartbeat(
                session, worker_id=self.worker_id, current_job_id=current_job_id
            ):
                self.written_job_id = current_job_id
                return
            worker = service.register(
                session, hostname=self.hostname, pid=self.pid, queues=self.queues, node=self.node
            )
            worker.current_job_id = current_job_id
            self.worker_id = worker.id
        self.written_job_id = current_job_id
        self.registered.set()
        log.info("registered as worker %s (%s/%d)", self.worker_id, self.hostname, self.pid)

    def set_current_job(self, job_id: str | None) -> None:
        """Note the job this process runs now (None when idle); written at once."""
        self.current_job_id = job_id
        self.wake.set()

    def stop(self, *, timeout: float = 5.0) -> None:
        """Stop heartbeating and record a clean exit."""
        self.stopped.set()
        self.wake.set()
        if self.is_alive():
            self.join(timeout)
        if self.worker_id is None:
            return
        try:
            with self.maker() as session, session.begin():
                service.mark_stopped(session, worker_id=self.worker_id)
        except Exception as error:
            log.warning("could not record the worker's exit: %s", error)


_current: Presence | None = None


def start(*, queues: Sequence[str], node: str | None = None) -> Presence:
    """Register this process as a worker and heartbeat from a daemon thread."""
    global _current
    if _current is not None:
        _current.stop()
    _current = Presence(queues=queues, node=node)
    _current.start()
    return _current


def note_current_job(job_id: str | None) -> None:
    """Runner hook: the job this process started (or None when it ended)."""
    if _current is not None:
        _current.set_current_job(job_id)


def stop() -> None:
    """Record that this process exits cleanly."""
    global _current
    if _current is not None:
        _current.stop()
        _current = None
