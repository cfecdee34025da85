"""``shipway up``: the API, the relay's periodic tasks and a worker per queue, stopped as one.

SIGTERM, SIGINT and SIGHUP to its pid or its process group are one graceful stop: the API
stops taking requests and finishes those under way, each worker finishes its running job
(Celery's warm shutdown) for at most ``SHIPWAY_UP_STOP_TIMEOUT_SECONDS``, then what is left
of it (pool children included) is killed and the jobs it still held are requeued at once.
The workers run in sessions of their own (``supervisor``), so a signal to the process group
reaches them only through ``shipway up``; they get SIGTERM from the kernel if ``shipway up``
dies without stopping them (SIGKILL, a crash), and the next ``shipway up`` on the data
directory kills what is left of them and takes their jobs back (``instance``).

uvicorn handles SIGINT and SIGTERM itself and, once stopped, raises the signal again for
the handler it found: shipway's, so the cleanup runs (with the default handler a SIGTERM
killed the process there and left the worker running, reparented to init).
"""

from __future__ import annotations

import gc
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from shipway.config import Settings
from shipway.embedded.instance import acquire, kill_leftover_workers
from shipway.embedded.recovery import take_back_jobs_of
from shipway.embedded.supervisor import WorkerSupervisor
from shipway.workers_registry.supervision import report_with

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


def run_up(
    *, settings: Settings, host: str, port: int, on_start: Callable[[list[int]], None]
) -> None:
    """Run everything until a stop signal; the workers are stopped whatever happens."""
    stops = StopRequests()  # before anything that takes time: a signal is never lost
    instance, previous = acquire(settings.data_dir)
    try:
        kill_leftover_workers(previous)
        nodes = previous.get("nodes")
        if isinstance(nodes, list) and nodes:
            take_back_jobs_of([str(node) for node in nodes])
        supervisor = WorkerSupervisor(
            settings=settings, instance=instance.id, on_exit=take_back_jobs_of
        )
        instance.record(nodes=supervisor.nodes)
        _serve(settings, supervisor, stops, host=host, port=port, on_start=on_start)
    finally:
        instance.release()
        # What is alive now lives until the exit: frozen, the interpreter's last garbage
        # collections skip it (they took 3-5 s of the stop on a busy machine).
        gc.freeze()


def _serve(
    settings: Settings,
    supervisor: WorkerSupervisor,
    stops: StopRequests,
    *,
    host: str,
    port: int,
    on_start: Callable[[list[int]], None],
) -> None:
    import uvicorn

    from shipway.api import create_app
    from shipway.jobs.periodic import run_forever

    periodic_stop = threading.Event()
    pids = supervisor.start()
    report_with(supervisor.report)
    try:
        app = create_app()  # wires the features in, for the periodic tasks too
        threading.Thread(
            target=run_forever, args=(periodic_stop,), name="periodic", daemon=True
        ).start()
        on_start(pids)
        server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
        stops.server = server
        if not stops.requested.is_set():
            server.run()
    finally:
        periodic_stop.set()
        report_with(None)
        supervisor.stop(timeout=settings.up_stop_timeout_seconds)
