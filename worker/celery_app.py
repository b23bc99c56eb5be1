"""The Celery app. The broker is Redis (``RVSM_BROKER_URL``); results live in the job store, not in Celery.

Delivery: ``acks_late`` with ``reject_on_worker_lost`` and prefetch 1, so a message is acknowledged
only when its job is done and a worker that dies hands it back; the visibility timeout
(``RVSM_VISIBILITY_TIMEOUT_S``) must be longer than the longest job, or Redis redelivers a job
that is still running (the job store's lease then keeps the copy from running twice).
"""

from __future__ import annotations

from functools import lru_cache

from celery import Celery
from kombu import Queue

from service.config import Settings, get_settings

QUEUES = ("cpu", "gpu")
DEFAULT_BROKER = "redis://127.0.0.1:6379/0"


TASK = "rvsm.run_job"


@lru_cache
def app_for(broker_url: str, visibility_timeout_s: int) -> Celery:
    """One Celery app per broker: the workers' (below) and, in the API, one per configured broker."""
    app = Celery("rvsm", include=["worker.tasks"])
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        task_queues=[Queue(q) for q in QUEUES],
        task_default_queue="cpu",
        worker_hijack_root_logger=False,
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
        broker_url=broker_url,
        broker_transport_options={"visibility_timeout": visibility_timeout_s},
    )
    return app


def celery_app(settings: Settings) -> Celery:
    return app_for(settings.broker_url or DEFAULT_BROKER, settings.visibility_timeout_s)


def enqueue(settings: Settings, job_id: str, queue: str) -> None:
    """Queue a job for the workers (raises when the broker cannot be reached)."""
    celery_app(settings).send_task(TASK, args=[job_id], queue=queue)


app = celery_app(get_settings())
