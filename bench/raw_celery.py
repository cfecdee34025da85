"""A bare Celery app for the dispatch baseline: one task that does nothing, same broker.

Started as ``celery -A bench.raw_celery worker`` by ``bench/dispatch.py`` with
``BENCH_BROKER_URL`` set to the Redis shipway uses; results go through the same Redis
so ``apply_async().get()`` is a full round trip. Its options match shipway's Celery
app (late ack, prefetch 1, JSON) so only shipway's own work differs.

``durable_noop`` is the second baseline, the floor of any job queue that keeps its jobs
in PostgreSQL: the caller commits a row, the task commits "running" then "succeeded"
with plain SQL on one open connection (``BENCH_DATABASE_URL``), the caller reads the row.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

QUEUE = "rawbench"
_url = os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/0")
FLOOR_TABLE_SQL = (
    "CREATE TABLE IF NOT EXISTS floor_jobs (id text PRIMARY KEY, state text NOT NULL, "
    "created_at timestamptz NOT NULL DEFAULT now(), finished_at timestamptz)"
)
_connection: Any = None

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


def _database() -> Any:
    """This process's open connection (autocommit: each statement is one transaction)."""
    global _connection
    if _connection is None:
        import psycopg

        _connection = psycopg.connect(os.environ["BENCH_DATABASE_URL"], autocommit=True)
    return _connection


@app.task(name="rawbench.durable_noop", ignore_result=True)
def durable_noop(job_id: str) -> None:
    """Claim and finish a floor_jobs row: two committed conditional UPDATEs."""
    database = _database()
    database.execute(
        "UPDATE floor_jobs SET state = 'running' WHERE id = %s AND state = 'queued'", (job_id,)
    )
    database.execute(
        "UPDATE floor_jobs SET state = 'succeeded', finished_at = now() "
        "WHERE id = %s AND state = 'running'",
        (job_id,),
    )
