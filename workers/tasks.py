"""Celery tasks: ids in, shipway services do the work."""

from __future__ import annotations

from shipway.bootstrap import load_features
from shipway.jobs.dispatch import TASK_NAME
from shipway.jobs.runner import run_job
from workers.celery_app import celery_app, send_job

load_features(sender=send_job)


@celery_app.task(name=TASK_NAME)
def run_job_task(job_id: str) -> str | None:
    """Run one shipway job by id (duplicate deliveries are harmless: claims are conditional)."""
    return run_job(job_id)
