"""Progress out of running jobs, and the ways a job is told to stop: :class:`Reporter` writes trace points
and progress to the store (and learns there that a job was cancelled or taken over), :class:`Heartbeat`
keeps the leases alive, :data:`shutting_down` is set when the worker is asked to stop.
"""

from __future__ import annotations

import logging
import threading
import time

from jobs import states
from jobs.db import get_sessionmaker
from jobs.settings import Settings

log = logging.getLogger("rvsm.worker")
LIVE_METRICS = ("lagrangian", "theta_w", "theta_u", "f_w", "f_u", "nnz_u")
# Set when the worker is asked to stop (SIGTERM, Ctrl-C): the running job is handed back at its next check.
shutting_down = threading.Event()


class Stop(Exception):
    """The job was cancelled, deleted or taken over: stop between iterations."""


class Released(Stop):
    """The worker is shutting down: hand the job back to the queue instead of finishing it."""


class Reporter:
    """Progress out of running jobs: buffers trace points, writes them with the progress to the store
    every ``progress_interval_s`` (renewing the leases), and raises :class:`Stop` when the jobs should stop.

    Holds one job, or several small toy jobs run as one batch (:mod:`worker.batches`): then row ``i`` of
    the batch is ``job_ids[i]``, each gets its own points and progress, all written in one transaction,
    and a job that should stop is dropped from the writes (its row runs on; :class:`Stop` comes when
    none is left). Called as the :mod:`rvsm` toy callback; :meth:`report` serves other kinds of job.
    """

    def __init__(self, settings: Settings, job_ids: str | list[str], worker: str) -> None:
        self.settings = settings
        self.ids = [job_ids] if isinstance(job_ids, str) else list(job_ids)
        self.worker = worker
        self.sessions = get_sessionmaker(settings.resolved_database_url)
        self.buffers: dict[str, list[dict]] = {j: [] for j in self.ids}
        # one job's first trace point is written at once, so that it shows progress from its start; a batch
        # (of small jobs, which mostly end within the interval) first writes after progress_interval_s
        self.last = 0.0 if len(self.ids) == 1 else time.monotonic()
        self.states: dict[str, dict] = {
            j: {"progress": 0.0, "iteration": 0, "max_iters": 0, "eta_s": None} for j in self.ids
        }
        self.stopped: set[str] = set()  # cancelled, deleted or taken over meanwhile

    def __call__(self, p: dict) -> None:
        """A toy progress event: one run's metrics as numbers; a sweep's as min / mean / max over the
        batch (the full per-run traces are in the result), so a large sweep does not flood the store."""
        if len(self.ids) > 1:
            return self._rows(p)
        one = p["configs"] == 1 and p["groups"] == 1
        point: dict = {"iter": p["iteration"], "group": p["group"], "active": p["active"]}
        for name in LIVE_METRICS:
            vals = p["metrics"].get(name, [])
            if one:
                point[name] = vals[0] if vals else None
            else:
                finite = [v for v in vals if v == v]
                point[name] = (
                    {"min": min(finite), "mean": sum(finite) / len(finite), "max": max(finite)} if finite else None
                )
        frac = (p["group"] + p["iteration"] / max(p["max_iters"], 1)) / p["groups"]
        self.report(point, progress=frac, iteration=p["iteration"], max_iters=p["max_iters"], eta_s=p["eta_s"])

    def _rows(self, p: dict) -> None:
        """A batch's event: each still-running row is its own job's point, as if that job ran alone."""
        for pos, row in enumerate(p["rows"]):
            if not p["running"][pos]:
                continue  # stopped: its trace ends here, as alone
            point = {"iter": p["iteration"], "group": 0, "active": 1}
            point |= {name: p["metrics"][name][pos] if name in p["metrics"] else None for name in LIVE_METRICS}
            job = self.ids[row]
            self.buffers[job].append(point)
            self.states[job] = {
                "progress": p["iteration"] / max(p["max_iters"], 1),
                "iteration": p["iteration"],
                "max_iters": p["max_iters"],
                "eta_s": p["eta_s"],
            }
        self.check()

    def report(
        self,
        point: dict | None,
        *,
        progress: float,
        iteration: int,
        max_iters: int,
        eta_s: float | None,
        force: bool = False,
    ) -> None:
        """One job's progress (the first it holds)."""
        job = self.ids[0]
        if point is not None:
            self.buffers[job].append(point)
        self.states[job] = {"progress": progress, "iteration": iteration, "max_iters": max_iters, "eta_s": eta_s}
        if force:
            self.flush()
        else:
            self.check()

    def check_shutdown(self) -> None:
        if shutting_down.is_set():
            raise Released

    def check(self) -> None:
        """Between training steps: a store round trip at most every ``progress_interval_s``."""
        if time.monotonic() - self.last >= self.settings.progress_interval_s:
            self.flush()

    def flush(self) -> None:
        self.check_shutdown()
        self.last = time.monotonic()
        with self.sessions() as s:
            for job in self.ids:
                points = self.take(job)
                if job in self.stopped:
                    continue
                if not states.report_progress(
                    s, job, self.worker, lease_s=self.settings.lease_s, points=points, commit=False, **self.states[job]
                ):
                    self.stopped.add(job)
            s.commit()
        if len(self.stopped) == len(self.ids):
            raise Stop

    def take(self, job: str) -> list[dict]:
        """The trace points of ``job`` not yet written, as strict JSON (an undefined angle, NaN, is null)."""
        points, self.buffers[job] = self.buffers[job], []
        for pt in points:
            for k, v in pt.items():
                if isinstance(v, float) and v != v:
                    pt[k] = None
        return points


class Heartbeat:
    """Renews the leases of the jobs this worker holds every ``lease_s / 3`` from a thread, so a lease
    runs out only when the worker process is gone (or frozen), not while a job loads data or runs a
    long step between progress writes."""

    def __init__(self, settings: Settings, job_ids: list[str], worker: str) -> None:
        self.settings, self.ids, self.worker = settings, job_ids, worker
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job_ids[0][:8]}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        sessions = get_sessionmaker(self.settings.resolved_database_url)
        while not self._stop.wait(self.settings.lease_s / 3):
            try:
                with sessions() as s:
                    if not states.renew_all(s, self.ids, self.worker, self.settings.lease_s):
                        return  # finished, cancelled, deleted or taken over: the jobs' own checks stop them
            except Exception as e:  # the store is briefly unreachable: try again next beat
                log.warning("jobs %s: lease renewal failed: %s: %s", self.ids[0], type(e).__name__, e)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
