"""``shipway up``'s workers: one per queue, restarted with backoff when one dies.

Builds and rollouts each get a worker of their own, so a rollback never waits behind a
build; the builds worker (and its pool child, which runs the build) has a lower CPU
priority (``nice`` +10), so that on a busy machine the API and the rollouts worker get the
CPU first (a build's RUN steps have low CPU shares too: ``docker_runtime``). A worker runs
in a session of its own (a signal to ``up``'s process group reaches it only through
``up``) and gets SIGTERM from the kernel if ``up`` dies without stopping it. When a worker
exits, what is left of its session (pool children) is killed, its running jobs are taken
back at once (``recovery``), and it is started again after 1 s, 2 s, 4 s ... at most 30 s
(back to 1 s after a run of a minute or more).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from shipway.config import Settings
from shipway.router.process import die_with_parent
from shipway.workers_registry.supervision import SupervisedWorker

log = logging.getLogger(__name__)

QUEUE_GROUPS: tuple[tuple[str, ...], ...] = (("builds",), ("rollouts",))
"""One worker per group: a long build never holds up a promote or a rollback."""
NICENESS = {"builds": 10}
"""How much lower than ``up`` a group's worker runs (its highest-priority queue counts)."""
FIRST_BACKOFF_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 30.0
HEALTHY_RUN_SECONDS = 60.0
"""A worker that ran this long before exiting is restarted after the first backoff again."""
CHECK_EVERY_SECONDS = 0.2


@dataclass
class _Slot:
    queues: tuple[str, ...]
    node: str
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    backoff: float = FIRST_BACKOFF_SECONDS
    last_exit: str | None = None
    restart_at: float | None = None


class WorkerSupervisor:
    """Starts, watches, restarts and stops ``shipway up``'s workers."""

    def __init__(
        self,
        *,
        settings: Settings,
        instance: str,
        on_exit: Callable[[Sequence[str]], object],
        queue_groups: Sequence[tuple[str, ...]] = QUEUE_GROUPS,
    ) -> None:
        self.settings, self.instance, self.on_exit = settings, instance, on_exit
        host = socket.gethostname()
        self.slots = [
            _Slot(queues=tuple(group), node=f"{'-'.join(group)}-{instance}@{host}")
            for group in queue_groups
        ]
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def nodes(self) -> list[str]:
        """The Celery node names of this instance's workers."""
        return [slot.node for slot in self.slots]

    def start(self) -> list[int]:
        """Start every worker (from the watching thread, which outlives them); their pids."""
        started = threading.Event()
        self._thread = threading.Thread(
            target=self._watch, args=(started,), name="worker-supervisor", daemon=True
        )
        self._thread.start()
        started.wait()
        return [slot.process.pid for slot in self.slots if slot.process is not None]

    def report(self) -> list[SupervisedWorker]:
        """What /readyz and GET /queue show."""
        now = time.monotonic()
        with self._lock:
            return [self._report(slot, now) for slot in self.slots]

    @staticmethod
    def _report(slot: _Slot, now: float) -> SupervisedWorker:
        code = slot.process.poll() if slot.process is not None else None
        return SupervisedWorker(
            queues=list(slot.queues),
            pid=slot.process.pid if slot.process is not None else None,
            alive=slot.process is not None and code is None,
            restarts=slot.restarts,
            # an exit the watcher has not handled yet (it looks every 0.2 s) shows at once
            last_exit=_exit_text(code) if code is not None else slot.last_exit,
            restart_in_seconds=None if slot.restart_at is None else max(0.0, slot.restart_at - now),
        )

    def stop(self, *, timeout: float) -> None:
        """SIGTERM every worker (a warm shutdown: running jobs finish), SIGKILL what is
        left after ``timeout``, then take back the jobs they still held."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            running = [slot.process for slot in self.slots if slot.process is not None]
        for process in running:
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + timeout
        for process in running:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            _kill_session(process)
        self.on_exit(self.nodes)

    def _watch(self, started: threading.Event | None = None) -> None:
        # The worker's parent-death signal follows the thread that started it: this thread
        # starts every worker and lives until they are stopped.
        for slot in self.slots:
            self._start(slot)
        if started is not None:
            started.set()
        while not self._stopping.wait(CHECK_EVERY_SECONDS):
            for slot in self.slots:
                if slot.process is not None and slot.process.poll() is not None:
                    self._exited(slot)
                if slot.restart_at is not None and time.monotonic() >= slot.restart_at:
                    self._start(slot)

    def _start(self, slot: _Slot) -> None:
        env = {
            **os.environ,
            "SHIPWAY_DATA_DIR": str(self.settings.data_dir.resolve()),
            "SHIPWAY_UP_INSTANCE": self.instance,
        }
        command = [sys.executable, "-m", "shipway.cli", "worker"]
        command += ["--queues", ",".join(slot.queues), "--hostname", slot.node]
        niceness = min(NICENESS.get(queue, 0) for queue in slot.queues)
        process = subprocess.Popen(
            command, env=env, start_new_session=True, preexec_fn=_preexec(niceness)
        )
        with self._lock:
            slot.process, slot.started_at, slot.restart_at = process, time.monotonic(), None

    def _exited(self, slot: _Slot) -> None:
        assert slot.process is not None
        code = slot.process.returncode
        _kill_session(slot.process)
        ran = time.monotonic() - slot.started_at
        backoff = FIRST_BACKOFF_SECONDS if ran >= HEALTHY_RUN_SECONDS else slot.backoff
        with self._lock:
            slot.last_exit = _exit_text(code)
            slot.restarts += 1
            slot.restart_at = time.monotonic() + backoff
            slot.backoff = min(MAX_BACKOFF_SECONDS, backoff * 2)
            slot.process = None
        log.warning(
            "worker %s (queues %s) stopped (%s) after %.0f s; restarting in %.0f s",
            slot.node,
            ",".join(slot.queues),
            slot.last_exit,
            ran,
            backoff,
        )
        try:
            self.on_exit([slot.node])
        except Exception:  # the database may be down: the lease reaper is the safety net
            log.exception("could not take back the jobs of %s", slot.node)


def _preexec(niceness: int) -> Callable[[], None] | None:
    """In the child before it runs: die with the starting thread, and lower its priority."""
    die = die_with_parent()
    if not niceness:
        return die

    def preexec() -> None:
        if die is not None:
            die()
        os.nice(niceness)

    return preexec


def _exit_text(code: int) -> str:
    return f"signal {-code}" if code < 0 else f"exit code {code}"


def _kill_session(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL what is left of the worker's session (its pool children); reap the worker."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
