"""Celery signal hooks: each prefork child registers in the worker registry and heartbeats.

The child (not the main process) registers because it runs the jobs: its pid is the
one in a job's lease owner ``hostname/pid/nonce``, so a running job maps to its worker.

A process that is stopping freezes what it holds (``gc.freeze``): the interpreter's last
garbage collections then skip it. On a busy machine they took seconds of an idle
``shipway up`` worker's stop.
"""

from __future__ import annotations

import gc
import logging
from typing import Any

from celery.signals import (
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_shutdown,
)

log = logging.getLogger(__name__)
_node: str | None = None
_queues: list[str] = []


@worker_init.connect
def remember_node(sender: Any = None, **_: Any) -> None:
    """In the main process, before the pool forks: note the node name and consumed queues."""
    global _node, _queues
    _node = getattr(sender, "hostname", None)
    app = getattr(sender, "app", None)
    if app is not None:
        _queues = sorted(app.amqp.queues.consume_from or app.amqp.queues)


@worker_process_init.connect
def register_child(**_: Any) -> None:
    """In each prefork child: fresh database connections, registration, heartbeats."""
    from shipway.db import get_engine
    from shipway.jobs import runner
    from shipway.workers_registry import presence

    get_engine().dispose(close=False)  # never share pooled connections with the parent
    presence.start(queues=_queues, node=_node)
    runner.on_current_job(presence.note_current_job)
    warm_up()


def warm_up() -> None:
    """Pay at the child's start what its first job would pay on its clock: the health
    probe's HTTP client (httpx imports httpcore, which imports trio when it is installed,
    and builds a TLS context) and the container runtime's client. py-spy on a pool child
    (bench/RESULTS.md) found them to be most of the first promote's extra time: about
    0.5 s of CPU under load. A failure here is only logged: the job would meet it again."""
    from shipway.releases.health import probe_client
    from shipway.runtime import get_runtime

    try:
        probe_client()
        get_runtime()
    except Exception:
        log.warning("worker warm-up failed; the first job pays it", exc_info=True)


@worker_process_shutdown.connect
def unregister_child(**_: Any) -> None:
    """A child exiting cleanly records it (a killed one just stops heartbeating)."""
    from shipway.workers_registry import presence

    presence.stop()
    gc.freeze()


@worker_shutdown.connect
def freeze_at_exit(**_: Any) -> None:
    """The main process, its pool stopped: nothing left to collect before the exit."""
    gc.freeze()
