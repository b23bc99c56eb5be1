"""The queue contract between the API and the workers: the task name, the queues, the broker options,
and publishing. The workers consume it (``worker.celery_app``); nothing here imports the worker.

A message is only a wake-up call carrying a job id: the job store decides what runs (see
:mod:`jobs.states`), so a duplicate message is harmless and a lost one is published again by the
reconciler. Every call here waits on the broker for at most ``RVSM_BROKER_TIMEOUT_S`` per attempt,
so a hung broker gives the API a quick error instead of a stall.
"""

from __future__ import annotations

from functools import lru_cache

from celery import Celery
from kombu import Queue
from kombu.exceptions import ChannelError

from .settings import Settings

TASK = "rvsm.run_job"
QUEUES = ("cpu", "gpu")


class BrokerNotConfigured(RuntimeError):
    """``RVSM_BROKER_URL`` is unset where a broker is needed (only ``rvsm serve`` starts one of its own)."""


def broker_url(settings: Settings) -> str:
    """The broker's URL. Unset means one thing everywhere: ``rvsm serve`` starts an embedded broker and sets
    it; anything else (the API under another server, a worker, the reconciler) raises
    :class:`BrokerNotConfigured` saying so, rather than guessing a Redis on localhost."""
    if not settings.broker_url:
        raise BrokerNotConfigured(
            "RVSM_BROKER_URL is not set: the API and the workers need the broker jobs are queued on "
            "(`rvsm serve` without it starts an embedded one)"
        )
    return settings.broker_url


def transport_options(settings: Settings, *, timeout_s: float | None) -> dict:
    """Redis transport options; ``timeout_s`` bounds every socket wait (``None``: the consumer's own)."""
    opts: dict = {"visibility_timeout": settings.visibility_timeout_s}
    if timeout_s is not None:
        opts |= {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s}
    return opts


def base_config(settings: Settings, *, timeout_s: float | None) -> dict:
    """Celery settings both sides share: the broker, the queues, JSON messages, no result backend."""
    return dict(
        broker_url=broker_url(settings),
        broker_transport_options=transport_options(settings, timeout_s=timeout_s),
        broker_connection_timeout=timeout_s or 4.0,
        task_queues=[Queue(q) for q in QUEUES],
        task_default_queue="cpu",
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
    )


@lru_cache
def _publisher(url: str, timeout_s: float, visibility_timeout_s: int) -> Celery:
    app = Celery("rvsm-publisher", set_as_current=False)
    settings = Settings(broker_url=url, visibility_timeout_s=visibility_timeout_s)
    app.conf.update(base_config(settings, timeout_s=timeout_s))
    return app


def publisher(settings: Settings) -> Celery:
    """A Celery app that only sends (built on first use, one per broker): the API's and the reconciler's."""
    return _publisher(broker_url(settings), settings.broker_timeout_s, settings.visibility_timeout_s)


def enqueue(settings: Settings, job_id: str, queue: str) -> None:
    """Publish a wake-up for ``job_id`` on ``queue``; raises when the broker does not take it in time."""
    enqueue_many(settings, [job_id], queue)


def enqueue_many(settings: Settings, job_ids: list[str], queue: str) -> None:
    """Publish one wake-up per job, in order, through one producer (one connection for the lot); raises when
    the broker does not take one in time."""
    app = publisher(settings)
    with app.producer_or_acquire() as producer:
        for job_id in job_ids:
            # one attempt (redis-py reconnects a stale connection itself): a hung broker costs one timeout
            app.send_task(TASK, args=[job_id], queue=queue, retry=False, producer=producer)


def ping(settings: Settings) -> None:
    """Raise unless the broker answers within the timeout (``/readyz``)."""
    with publisher(settings).connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=settings.broker_timeout_s)
        conn.default_channel.client.ping()


def waiting(settings: Settings, queue: str) -> int:
    """Messages waiting on ``queue`` in the broker (not counting ones a worker has taken)."""
    with publisher(settings).connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=settings.broker_timeout_s)
        try:
            return conn.default_channel.queue_declare(queue=queue, passive=True).message_count
        except ChannelError:  # no such list in Redis: nothing waiting
            return 0
