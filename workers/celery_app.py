"""The Celery application: transport only; the database holds the truth."""

from __future__ import annotations

import logging
import threading
from functools import lru_cache
from typing import Any

from celery import Celery
from kombu import Queue

from shipway.config import Settings, get_settings
from shipway.jobs.dispatch import task_name
from workers.fs_broker import QUARANTINE_FOLDER, WAKE_FOLDER

log = logging.getLogger(__name__)

FILESYSTEM_TRANSPORT = "workers.fs_broker:Transport"
"""kombu's filesystem transport with wake-ups, atomic writes and a quarantine (fs_broker)."""


def broker_options(settings: Settings) -> dict[str, Any]:
    """Transport options for the configured broker."""
    if settings.resolved_broker_url.startswith("filesystem"):
        folder = settings.broker_folder
        for sub in ("out", "processed", "control", WAKE_FOLDER, QUARANTINE_FOLDER):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        return {
            "data_folder_in": str(folder / "out"),
            "data_folder_out": str(folder / "out"),
            "processed_folder": str(folder / "processed"),
            "store_processed": False,
            "control_folder": str(folder / "control"),
        }
    timeout = settings.dispatch_timeout_seconds
    return {
        "socket_connect_timeout": timeout,
        "socket_timeout": timeout,
        "visibility_timeout": 3600,
    }


def make_celery(settings: Settings | None = None) -> Celery:
    """Build the Celery app from settings."""
    settings = settings or get_settings()
    app = Celery(
        "shipway",
        broker=settings.resolved_broker_url,
        include=["workers.tasks", "workers.signals"],
    )
    if settings.resolved_broker_url.startswith("filesystem"):
        app.conf.broker_transport = FILESYSTEM_TRANSPORT
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        task_default_queue="rollouts",
        task_queues=[Queue("builds"), Queue("rollouts")],
        broker_transport_options=broker_options(settings),
        broker_connection_timeout=settings.dispatch_timeout_seconds,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return app


@lru_cache(maxsize=8)
def _celery_for(broker_url: str, broker_folder: str) -> Celery:
    del broker_url, broker_folder  # the cache key; the settings carry the same values
    return make_celery()


def current_celery() -> Celery:
    """The Celery app of the current settings (cached per broker)."""
    settings = get_settings()
    return _celery_for(settings.resolved_broker_url, str(settings.broker_folder))


def send_job(job_id: str, queue: str, kind: str = "") -> None:
    """The engine's broker sender: one task message carrying the job id, to ``queue``,
    named after the job's kind (``shipway.promote``: what Flower and celery events show)."""
    current_celery().send_task(task_name(kind), args=[job_id], queue=queue, retry=False)


def warm_sender(app: Celery | None = None) -> None:
    """Pay before the first dispatch what it would pay on its clock: the broker transport's
    import (kombu's Redis transport and redis-py), the connection, the declaration of the
    job queues, and Celery's (disabled) result backend. About 70-190 ms for the API's first
    job (bench/README.md, dispatch). The queues are declared through the producer pool
    that ``send_job`` uses, so its first send finds them declared. A failure (the broker
    down) is only logged: the first send meets it again and the relay covers the job."""
    try:
        app = app or current_celery()
        log.debug("result backend %s", app.backend)  # built on first use: send_task reads it
        with app.producer_pool.acquire(block=True) as producer:
            for queue in app.amqp.queues.values():
                producer.maybe_declare(queue)
    except Exception:
        log.warning("broker sender warm-up failed; the first dispatch pays it", exc_info=True)


def warm_sender_in_background() -> threading.Thread:
    """``warm_sender`` of the current settings' app on a daemon thread: never delays a
    start, never fails it (the API's lifespan); the thread is returned for tests."""
    try:
        app: Celery | None = current_celery()  # here: the settings of this start
    except Exception:  # the thread meets it again, and logs it
        app = None
    thread = threading.Thread(target=warm_sender, args=(app,), name="warm-sender", daemon=True)
    thread.start()
    return thread


celery_app = current_celery()
