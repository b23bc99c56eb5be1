"""Running one job: claim it in the store, call :mod:`rvsm`, write the artifacts, record the outcome.

No Celery here: the same function runs under a worker or in a test. A claim that misses (the job is
finished, cancelled, deleted, or running under another worker's live lease) acknowledges its message
and does nothing: that drops no job, because the reconciler, not the message, watches the lease and
requeues the job if its holder dies (:mod:`worker.reconciler`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import threading
import time
import traceback
import uuid
from pathlib import Path

from rvsm.errors import InputError
from rvsm.toy import SpecError, run_spec_columnar
from service import store
from service.artifacts import COLUMNS, job_dir, record
from service.config import Settings, get_settings
from service.db import Artifact, Job, get_sessionmaker

from .checkpoint_jobs import resume_path, run_checkpoint_job

log = logging.getLogger("rvsm.worker")
LIVE_METRICS = ("lagrangian", "theta_w", "theta_u", "f_w", "f_u", "nnz_u")
# Test-only fault injection, never reachable through the API: a file listing job ids (one a line);
# a worker that claims one of them SIGKILLs itself, like a job that runs out of memory every time.
POISON_ENV = "RVSM_TEST_POISON_FILE"
# Set when the worker is asked to stop (SIGTERM, Ctrl-C): the running job is handed back at its next check.
shutting_down = threading.Event()


class Stop(Exception):
    """The job was cancelled, deleted or taken over: stop between iterations."""


class Released(Stop):
    """The worker is shutting down: hand the job back to the queue instead of finishing it."""


class Reporter:
    """Progress out of a running job: buffers trace points, writes them with the progress to the store
    every ``progress_interval_s`` (renewing the lease), and raises :class:`Stop` when the job should stop.

    Called as the :mod:`rvsm` toy callback; :meth:`report` serves other kinds of job.
    """

    def __init__(self, settings: Settings, job_id: str, worker: str) -> None:
        self.settings = settings
        self.job_id = job_id
        self.worker = worker
        self.sessions = get_sessionmaker(settings.resolved_database_url)
        self.buffer: list[dict] = []
        self.last = 0.0  # the first trace point is written at once: a running job shows progress from its start
        self.state: dict = {"progress": 0.0, "iteration": 0, "max_iters": 0, "eta_s": None}

    def __call__(self, p: dict) -> None:
        """A toy progress event: one run's metrics as numbers; a sweep's as min / mean / max over the
        batch (the full per-run traces are in the result), so a large sweep does not flood the store."""
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

    def report(
        self, point: dict | None, *, progress: float, iteration: int, max_iters: int, eta_s: float | None,
        force: bool = False,
    ) -> None:  # fmt: skip
        if point is not None:
            self.buffer.append(point)
        self.state = {"progress": progress, "iteration": iteration, "max_iters": max_iters, "eta_s": eta_s}
        if force or time.monotonic() - self.last >= self.settings.progress_interval_s:
            self.flush()

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
        points, self.buffer = self.buffer, []
        for pt in points:  # JSON has no NaN: undefined angles travel as null
            for k, v in pt.items():
                if isinstance(v, float) and v != v:
                    pt[k] = None
        with self.sessions() as s:
            ok = store.report_progress(
                s, self.job_id, self.worker, lease_s=self.settings.lease_s, points=points, **self.state
            )
        if not ok:
            raise Stop


class Heartbeat:
    """Renews the lease of the job this worker holds every ``lease_s / 3`` from a thread, so the lease
    runs out only when the worker process is gone (or frozen), not while a job loads data or runs a
    long step between progress writes."""

    def __init__(self, settings: Settings, job_id: str, worker: str) -> None:
        self.settings, self.job_id, self.worker = settings, job_id, worker
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job_id[:8]}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        sessions = get_sessionmaker(self.settings.resolved_database_url)
        while not self._stop.wait(self.settings.lease_s / 3):
            try:
                with sessions() as s:
                    if not store.renew(s, self.job_id, self.worker, self.settings.lease_s):
                        return  # finished, cancelled, deleted or taken over: the job's own checks stop it
            except Exception as e:  # the store is briefly unreachable: try again next beat
                log.warning("job %s: lease renewal failed: %s: %s", self.job_id, type(e).__name__, e)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def summarize_toy(result: dict) -> dict:
    """Headline numbers for gates: one run's, or a sweep's worst case."""
    runs = result["runs"] if "runs" in result else [result]
    finals = [r["final"] for r in runs]
    thetas = [f["theta_w"] for f in finals if f["theta_w"] is not None]
    dims = [f["d"] if "d" in f else len(f["w"]) for f in finals]  # a sweep's summaries carry d, not w
    zeros = [d - f["nnz_u"] for d, f in zip(dims, finals, strict=True)]
    return {
        "runs": len(runs),
        "iters": max(f["iters"] for f in finals),
        "max_theta_w": max(thetas) if thetas else None,
        "min_zeros": min(zeros),
        "min_zero_fraction": min(z / d for z, d in zip(zeros, dims, strict=True)),
        "all_converged": all(f["converged"] for f in finals),
        "any_diverged": any(f["diverged"] for f in finals),
        "bounds_failed": sorted(
            {b["name"] for r in runs for b in r["bounds"] if b["hypotheses_met"] and b["holds"] is False}
        ),
    }


def _save(settings: Settings, job_id: str, files: dict[str, bytes]) -> list[Artifact]:
    return [record(settings.resolved_artifact_dir, job_id, name, data) for name, data in files.items()]


def toy_files(spec: dict, settings: Settings, reporter: Reporter) -> tuple[dict[str, bytes], dict]:
    """Run a toy job: ``result.json`` (a large sweep's: a summary per run; any sweep's: a ``columns`` link)
    and, for a sweep, ``runs.safetensors`` with every run's trace and vectors (:func:`rvsm.toy.run_spec_columnar`).
    The plot is drawn later, by the API, when first asked for (:mod:`service.artifacts`)."""
    from safetensors.torch import save

    result, columns = run_spec_columnar(spec, device=settings.device, callback=reporter)
    reporter.flush()
    files = {}
    if columns:
        files[COLUMNS] = save(columns)
        result["columns"] = {
            "artifact": COLUMNS,
            "format": "safetensors",
            "rows": len(result["runs"]),
            "inline": "trace" in result["runs"][0],  # a small sweep's runs carry their traces and vectors too
            "tensors": {name: {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape)}
                        for name, t in columns.items()},
        }  # fmt: skip
    files["result.json"] = json.dumps(result, allow_nan=False).encode()
    return files, summarize_toy(result)


def _poison_check(job_id: str) -> None:
    """Test-only (see ``POISON_ENV``): die the way an out-of-memory kill does, with no cleanup."""
    path = os.environ.get(POISON_ENV)
    if path and job_id in Path(path).read_text().split():
        log.warning("job %s: test poison: SIGKILL to this worker", job_id)
        os.kill(os.getpid(), signal.SIGKILL)


def execute(job_id: str, *, settings: Settings | None = None) -> str:
    """Run ``job_id`` if this worker can claim it; returns the outcome (``skipped`` when not claimed)."""
    settings = settings or get_settings()
    worker = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    sessions = get_sessionmaker(settings.resolved_database_url)
    with sessions() as s:
        job = store.claim(s, job_id, worker, settings.lease_s)
        if job is None:
            log.info("job %s: not claimable (finished, cancelled, deleted or held by a live worker)", job_id)
            return "skipped"
        spec, kind = job.spec, job.kind
    _poison_check(job_id)
    log.info("job %s: running (%s) as %s", job_id, kind, worker)
    reporter = Reporter(settings, job_id, worker)
    heartbeat = Heartbeat(settings, job_id, worker)
    try:
        reporter.check_shutdown()
        if kind == "checkpoint":
            files, summary = run_checkpoint_job(job_id, spec, settings, reporter)
            result_name = "report.json"
        else:
            files, summary = toy_files(spec, settings, reporter)
            result_name = "result.json"
        arts = _save(settings, job_id, files)
        result_path = str(Path(job_id) / result_name)
        outcome, error = "succeeded", None
    except Released:
        with sessions() as s:
            released = store.release(s, job_id, worker)
        log.info("job %s: worker shutting down; handed back to the queue: %s", job_id, released)
        return "released"
    except Stop:
        arts, result_path, summary = [], None, None
        outcome, error = "cancelled", None
    except (SpecError, InputError) as e:
        arts, result_path, summary = [], None, None
        outcome, error = "failed", f"invalid input: {e}"
    except Exception as e:  # a failed job is a result, not a worker crash
        log.error("job %s failed:\n%s", job_id, traceback.format_exc())
        arts, result_path, summary = [], None, None
        outcome, error = "failed", f"{type(e).__name__}: {e}"
    finally:
        heartbeat.stop()
    with sessions() as s:
        done = store.finish(
            s, job_id, worker, state=outcome, error=error, result_path=result_path, summary=summary, artifacts=arts
        )
    if not done:
        log.info("job %s: no longer held by %s; outcome %s dropped", job_id, worker, outcome)
        with sessions() as s:
            gone = s.get(Job, job_id) is None
        if gone:  # deleted while it ran: leave no files behind
            shutil.rmtree(job_dir(settings.resolved_artifact_dir, job_id), ignore_errors=True)
        return "dropped"
    if outcome != "failed":  # a finished job needs no resume point (a failed one keeps it for a retry)
        resume_path(settings, job_id).unlink(missing_ok=True)
    log.info("job %s: %s", job_id, outcome)
    return outcome
