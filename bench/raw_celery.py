"""A bare Celery app for the dispatch baseline: one task that does nothing, same broker.

Started as ``celery -A bench.raw_celery worker`` by ``bench/dispatch.py`` with
``BENCH_BROKER_URL`` set to the Redis shipway uses; results go through the same Redis
so ``apply_async().get()`` is a full round trip. Its options match shipway's Celery
app (late ack, prefetch 1, JSON) so only shipway's own work differs.
"""

from __future__ import annotations

import os

from celery import Celery

QUEUE = "rawbench"
_url = os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/0")

app = Celery("rawbench", broker=_url, backend=_url)
app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_serializer="json",
    accept_content=["json"],
    result_serializer="json",
    task_default_queue=QUEUE,
    worker_hijack_root_logger=False,
    worker_send_task_events=False,
    broker_connection_retry_on_startup=True,
)


@app.task(name="rawbench.noop")
def noop() -> None:
    """Nothing: the round trip is all Celery and Redis."""
    return None
