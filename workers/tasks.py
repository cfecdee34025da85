"""Celery tasks: ids in, shipway services do the work.

One task per job kind (``shipway.publish``, ``shipway.promote``, ...), all running the same
job runner, so that Flower and ``celery events`` show what each job is; plus
``shipway.run_job`` for messages sent without a kind. A job that ends failed fails its
task (``JobFailed``), so monitoring tools show the real outcome, not a successful task.
"""

from __future__ import annotations

from celery import Task

from shipway.bootstrap import load_features
from shipway.jobs import handlers
from shipway.jobs.dispatch import TASK_NAME, task_name
from shipway.jobs.runner import run_job
from workers.celery_app import celery_app, send_job

load_features(sender=send_job)


class JobFailed(Exception):
    """The job ended ``failed`` (its diagnosis is in the database and the API)."""


def run_job_task(job_id: str) -> str:
    """Run one shipway job by id (duplicate deliveries are harmless: claims are conditional);
    returns its final state, raises JobFailed if it failed."""
    state = run_job(job_id)
    if state == "failed":
        raise JobFailed(f"job {job_id} failed: GET /api/v1/jobs/{job_id} has the diagnosis")
    return state or "not run here (another worker holds it, or it already ended)"


# "throws": an expected outcome, logged in one line without a traceback.
tasks: dict[str, Task] = {
    name: celery_app.task(name=name, throws=(JobFailed,))(run_job_task)
    for name in {TASK_NAME, *(task_name(kind) for kind in handlers.kinds())}
}
