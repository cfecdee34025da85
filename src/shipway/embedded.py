"""``shipway up``: the API, the relay's periodic tasks and one worker, stopped as one.

SIGTERM, SIGINT and SIGHUP to its pid are one graceful stop: the API stops taking
requests and finishes those under way, the worker finishes its running job (Celery's warm
shutdown) for at most ``SHIPWAY_UP_STOP_TIMEOUT_SECONDS``, then its whole process group
(pool children included) is killed. The worker runs in a session of its own, so a signal
to ``shipway up``'s process group reaches the worker only through ``shipway up``; and it
gets SIGTERM from the kernel if ``shipway up`` dies without stopping it (SIGKILL, a crash).

uvicorn handles SIGINT and SIGTERM itself and, once stopped, raises the signal again for
the handler it found: shipway's, so the cleanup runs (with the default handler a SIGTERM
killed the process there and left the worker running, reparented to init).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from shipway.config import Settings
from shipway.router.process import die_with_parent

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class StopRequests:
    """Turns SIGTERM, SIGINT and SIGHUP into a stop request (and stops the server)."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.server: Any = None  # uvicorn.Server once it exists
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self.requested.set()
        if self.server is not None:
            self.server.should_exit = True


def start_worker(settings: Settings) -> subprocess.Popen[bytes]:
    """``shipway worker`` in a session of its own that dies with this process."""
    env = {**os.environ, "SHIPWAY_DATA_DIR": str(settings.data_dir.resolve())}
    return subprocess.Popen(
        [sys.executable, "-m", "shipway.cli", "worker"],
        env=env,
        start_new_session=True,
        preexec_fn=die_with_parent(),
    )


def stop_worker(worker: subprocess.Popen[bytes], *, timeout: float) -> None:
    """SIGTERM (a warm shutdown: the running job finishes), then after ``timeout`` SIGKILL
    to the worker's whole process group; returns once nothing of it is left."""
    if worker.poll() is None:
        worker.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.wait(timeout=timeout)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(worker.pid, signal.SIGKILL)  # and pool children a dying main left behind
    worker.wait()


def run_up(*, settings: Settings, host: str, port: int, on_start: Callable[[int], None]) -> None:
    """Run everything until a stop signal; the worker is stopped whatever happens."""
    import uvicorn

    from shipway.api import create_app
    from shipway.jobs.periodic import run_forever

    stops = StopRequests()  # before anything that takes time: a signal is never lost
    worker = start_worker(settings)
    periodic_stop = threading.Event()
    try:
        app = create_app()  # wires the features in, for the periodic tasks too
        threading.Thread(
            target=run_forever, args=(periodic_stop,), name="periodic", daemon=True
        ).start()
        on_start(worker.pid)
        server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
        stops.server = server
        if not stops.requested.is_set():
            server.run()
    finally:
        periodic_stop.set()
        stop_worker(worker, timeout=settings.up_stop_timeout_seconds)
