"""The reconciler: the job store, not the broker, decides what runs. :func:`sweep` repairs the store from
itself and

- ends a running job whose lease ran out: ``requeue`` (and publish it again) while attempts are
  left, ``give_up`` (failed, the error says why) once ``attempts`` reached ``RVSM_MAX_ATTEMPTS``,
  ``reap`` (cancelled) when a cancel was asked of a job whose worker is gone;
- publishes again a queued job nobody claimed by its deadline, when the broker holds fewer messages
  for its queue than there are queued jobs (the message was lost: Redis restarted empty, the API
  died between the commit and the publish). A backlog that is merely waiting is left alone.

It sweeps every ``RVSM_REAPER_INTERVAL_S`` in a thread of every worker (:mod:`worker.reconciler`) and of every
API process (:func:`start`, unless ``RVSM_API_RECONCILER=false``), so recovery needs no live worker. Every step is
a conditional UPDATE (:mod:`jobs.states`), so any number of reconcilers may sweep at once: one wins each
transition and publishes. A duplicate message is harmless (the claim misses); a lost one is what this repairs.
Recovery after a worker dies takes about ``RVSM_LEASE_S + RVSM_REAPER_INTERVAL_S``, whatever the visibility
timeout.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable

from . import counters, states
from .db import get_sessionmaker
from .queue import enqueue, waiting
from .settings import Settings

log = logging.getLogger("rvsm.reconciler")


def sweep(settings: Settings) -> Counter[str]:
    """One pass; returns how many of each transition it made (``publish_failed`` too)."""
    done: Counter[str] = Counter()
    sessions = get_sessionmaker(settings.resolved_database_url)
    with sessions() as s:
        for job in states.expired(s):
            holder, attempts = job.worker, job.attempts
            event = states.recover(s, job, max_attempts=settings.max_attempts, dispatch_s=settings.dispatch_timeout_s)
            if event is None:
                continue
            done[event] += 1
            log.warning("job %s: lease of %s expired (attempt %d): %s", job.id, holder, attempts, event)
            if event == "requeue":
                _publish(settings, job.id, job.queue, done)
        late = states.unclaimed(s)
        for queue in sorted({j.queue for j in late}):
            if not _maybe_lost(settings, s, queue):
                continue
            for job in (j for j in late if j.queue == queue):
                if states.redispatch(s, job, settings.dispatch_timeout_s):
                    done["redispatch"] += 1
                    log.warning("job %s: queued and unclaimed past its deadline: published again", job.id)
                    _publish(settings, job.id, queue, done)
    return done


def _maybe_lost(settings: Settings, session, queue: str) -> bool:  # noqa: ANN001
    """Fewer messages wait on ``queue`` than there are queued jobs for it: some message is missing."""
    try:
        return waiting(settings, queue) < states.queued_count(session, queue)
    except Exception as e:  # the broker is down: nothing can be published now; the next sweep retries
        log.warning("reconciler: cannot read queue %s: %s: %s", queue, type(e).__name__, e)
        return False


def _publish(settings: Settings, job_id: str, queue: str, done: Counter[str]) -> None:
    try:
        enqueue(settings, job_id, queue)
    except Exception as e:  # the row stays queued with a deadline: a later sweep publishes it
        done["publish_failed"] += 1
        with get_sessionmaker(settings.resolved_database_url)() as s:
            counters.bump(s, "publish_failed")
            s.commit()
        log.warning("job %s: publish failed (%s: %s); a later sweep retries", job_id, type(e).__name__, e)


def run(settings: Settings, stop: threading.Event, before: Callable[[], None] | None = None) -> None:
    """Sweep every ``reaper_interval_s`` until ``stop`` is set (``before`` each sweep: a worker's heartbeat); a
    failure is logged and retried."""
    while not stop.is_set():
        try:
            if before is not None:
                before()
            sweep(settings)
        except Exception:
            log.exception("reconciler: sweep failed; retrying in %.1fs", settings.reaper_interval_s)
        stop.wait(settings.reaper_interval_s)


def start(
    settings: Settings, stop: threading.Event, before: Callable[[], None] | None = None, name: str = "rvsm-reconciler"
) -> threading.Thread:
    """:func:`run` in a daemon thread."""
    t = threading.Thread(target=run, args=(settings, stop, before), name=name, daemon=True)
    t.start()
    log.info("reconciler (%s): sweeping every %.1fs", name, settings.reaper_interval_s)
    return t
