"""The workers' Celery app, built on demand by :func:`make_app` (nothing is built at import time).

It consumes the queue contract of :mod:`jobs.queue` (task name, queues, broker options). Delivery:
``acks_late`` and prefetch 1, so a worker holds at most one message and acknowledges it when its job
is done. What protects a job is not the message but the job store: a worker that dies (SIGKILL, out
of memory) leaves its job ``running`` under a lease that stops being renewed, and the reconciler
(:mod:`worker.reconciler`, a thread in every worker) puts it back on the queue once the lease has run
out, whatever the broker's visibility timeout. (``reject_on_worker_lost`` is not set: under the solo
pool there is no child process whose loss it could detect.)
"""

from __future__ import annotations

import threading

from celery import Celery, signals

from jobs.queue import base_config
from jobs.settings import Settings
from rvsm import sandbox

from . import reconciler
from .progress import shutting_down
from .tasks import register


def make_app(settings: Settings) -> Celery:
    """The worker app: the shared broker config, one job at a time, the ``rvsm.run_job`` task, and the
    signal hooks that start the reconciler and hand a running job back on shutdown."""
    app = Celery("rvsm", set_as_current=True)
    app.conf.update(
        base_config(settings, timeout_s=None),
        task_acks_late=True,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    register(app)
    signals.worker_ready.connect(lambda sender=None, **_: reconciler.start(settings, _queues(sender)), weak=False)
    # the training children's fork server imports torch once, now, not when the first job arrives
    signals.worker_ready.connect(lambda **_: threading.Thread(target=sandbox.warm, daemon=True).start(), weak=False)
    signals.worker_shutting_down.connect(lambda sender=None, **_: shutting_down.set(), weak=False)
    return app


def _queues(consumer: object) -> list[str]:
    """The queues this worker consumes (``-Q``), from Celery's consumer at ``worker_ready``."""
    task_consumer = getattr(consumer, "task_consumer", None)
    return sorted(q.name for q in getattr(task_consumer, "queues", []))
