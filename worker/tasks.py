"""Celery tasks: each takes a job id and hands it to :func:`worker.jobs.execute`."""

from __future__ import annotations

from celery import Celery

from jobs.queue import TASK

from .jobs import execute


def register(app: Celery) -> None:
    """Register ``rvsm.run_job`` on ``app``."""

    @app.task(name=TASK, acks_late=True)
    def run_job(job_id: str) -> str:
        """Run one job from the store; safe to deliver twice (a second delivery finds it claimed or done)."""
        return execute(job_id)
