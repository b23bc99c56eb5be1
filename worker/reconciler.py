"""The worker's reconciler thread: every ``RVSM_REAPER_INTERVAL_S`` it says this worker is alive (``rvsm_workers_alive``
in ``/metrics``) and sweeps the job store (:func:`jobs.reconciler.sweep`: lost leases requeued or given up,
lost messages published again). The API sweeps too, so recovery never waits for a worker to start.
"""

from __future__ import annotations

import functools
import os
import socket
import threading
from collections.abc import Sequence

from jobs import counters, reconciler
from jobs.db import get_sessionmaker
from jobs.settings import Settings

_started = threading.Event()


def beat(settings: Settings, queues: Sequence[str]) -> None:
    """This worker process is alive (``rvsm_workers_alive`` in ``/metrics``)."""
    with get_sessionmaker(settings.resolved_database_url)() as s:
        counters.heartbeat(
            s,
            name=f"{socket.gethostname()}:{os.getpid()}",
            queues=queues,
            interval_s=settings.reaper_interval_s,
            pid=os.getpid(),
        )


def start(settings: Settings, queues: Sequence[str] = ()) -> threading.Thread | None:
    """Start the beating and sweeping thread once per process (on Celery's ``worker_ready``)."""
    if _started.is_set():
        return None
    _started.set()
    return reconciler.start(settings, threading.Event(), functools.partial(beat, settings, tuple(queues)))
