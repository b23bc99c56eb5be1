"""Celery tasks: each takes a job id and hands it to :func:`worker.jobs.execute`."""

from __future__ import annotations

from .celery_app import TASK, app
from .jobs import execute


@app.task(name=TASK, acks_late=True, reject_on_worker_lost=True)
def run_job(job_id: str) -> str:
    """Run one job from the store; safe to deliver twice (a second delivery finds it claimed or done)."""
    return execute(job_id)
