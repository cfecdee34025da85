"""Celery signal hooks: each prefork child registers in the worker registry and heartbeats.

The child (not the main process) registers because it runs the jobs: its pid is the
one in a job's lease owner ``hostname/pid/nonce``, so a running job maps to its worker.
"""

from __future__ import annotations

from typing import Any

from celery.signals import worker_init, worker_process_init, worker_process_shutdown

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


@worker_process_shutdown.connect
def unregister_child(**_: Any) -> None:
    """A child exiting cleanly records it (a killed one just stops heartbeating)."""
    from shipway.workers_registry import presence

    presence.stop()
