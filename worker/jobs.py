"""Running one job: claim it in the store, call :mod:`rvsm`, write the artifacts, record the outcome.

No Celery here: the same function runs under a worker or in a test. A claim that misses (the job is
finished, cancelled, deleted, or running under another worker's live lease) acknowledges its message
and does nothing: that drops no job, because the reconciler, not the message, watches the lease and
requeues the job if its holder dies (:mod:`worker.reconciler`). A small toy job takes queued
batch-mates with it and runs with them as one batch (:mod:`worker.batches`); their own messages then
find them claimed or done.
"""

from __future__ import annotations

import logging
import os
import socket
import traceback
import uuid

import torch

from jobs import states
from jobs.db import get_sessionmaker
from jobs.layout import COLUMNS, RESULTS, result_path
from jobs.settings import Settings, get_settings
from rvsm.errors import InputError
from rvsm.toy import run_spec_columnar

from .batches import claim_mates, run_together
from .checkpoint_jobs import run_checkpoint_job
from .outcomes import End, conclude, poison_check, result_json, save, summarize_toy
from .progress import Heartbeat, Released, Reporter, Stop

log = logging.getLogger("rvsm.worker")


def toy_files(spec: dict, settings: Settings, reporter: Reporter) -> tuple[dict[str, bytes], dict]:
    """Run a toy job: ``result.json`` (a large sweep's: a summary per run; any sweep's: a ``columns`` link)
    and, for a sweep, ``runs.safetensors`` with every run's trace and vectors (:func:`rvsm.toy.run_spec_columnar`).
    The plot is drawn later, by the API, when first asked for (:mod:`jobs.layout`)."""
    from safetensors.torch import save as save_tensors

    result, columns = run_spec_columnar(spec, device=settings.device, callback=reporter)
    reporter.flush()
    files = {}
    if columns:
        files[COLUMNS] = save_tensors(columns)
        result["columns"] = {
            "artifact": COLUMNS,
            "format": "safetensors",
            "rows": len(result["runs"]),
            "inline": "trace" in result["runs"][0],  # a small sweep's runs carry their traces and vectors too
            "tensors": {
                name: {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape)}
                for name, t in columns.items()
            },
        }
    files[RESULTS["toy"]] = result_json(result)
    return files, summarize_toy(result)


def execute(job_id: str, *, settings: Settings | None = None) -> str:
    """Run ``job_id`` if this worker can claim it; returns the outcome (``skipped`` when not claimed)."""
    settings = settings or get_settings()
    size_threads(settings)
    worker = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    with get_sessionmaker(settings.resolved_database_url)() as s:
        claimed = states.claim(s, job_id, worker, settings.lease_s)
        if claimed is None:
            log.info("job %s: not claimable (finished, cancelled, deleted or held by a live worker)", job_id)
            return "skipped"
        spec, kind = claimed.job.spec, claimed.job.kind
        mates, worker = claim_mates(s, settings, worker, claimed.job, first=claimed.first)
    if not mates:
        return run_claimed(settings, worker, job_id, spec, kind)
    jobs = [(job_id, spec), *mates]
    heartbeat = Heartbeat(settings, [j for j, _ in jobs], worker)
    try:
        outcomes = run_together(settings, worker, jobs)
        if outcomes is None:  # the batch failed as a whole: each job alone, so that a bad one fails by itself
            outcomes = [run_claimed(settings, worker, j, sp, "toy") for j, sp in jobs]
    finally:
        heartbeat.stop()
    return outcomes[0]


def size_threads(settings: Settings, *, cores: int | None = None) -> int:
    """Set torch's threads for this worker's jobs (a checkpoint job's training child gets as many):
    ``RVSM_TORCH_THREADS``, else the cores this process may run on (its CPU affinity, which a container's
    cpuset narrows). Fixed per worker, never by load: the count changes a run's last bits (reductions split
    differently), and a job resumed on another worker of the same deployment must give the same numbers.
    Where several workers share a box, set ``RVSM_TORCH_THREADS`` to the cores divided among them (on a shared
    2-core box a 10,000-configuration sweep took 3x longer with two threads than with one)."""
    n = settings.torch_threads or cores or len(os.sched_getaffinity(0))
    torch.set_num_threads(n)
    return n


def run_claimed(settings: Settings, worker: str, job_id: str, spec: dict, kind: str) -> str:
    """Run a job this worker has claimed, alone; its outcome."""
    poison_check(job_id)
    log.info("job %s: running (%s) as %s", job_id, kind, worker)
    reporter = Reporter(settings, job_id, worker)
    heartbeat = Heartbeat(settings, [job_id], worker)
    end = End(job_id, "succeeded")
    try:
        reporter.check_shutdown()
        if kind == "checkpoint":
            files, end.summary = run_checkpoint_job(job_id, spec, settings, reporter)
        else:
            files, end.summary = toy_files(spec, settings, reporter)
        end.artifacts = save(settings, job_id, files)
        end.result_path = result_path(job_id, kind)
    except Released:
        with get_sessionmaker(settings.resolved_database_url)() as s:
            released = states.release(s, job_id, worker)
        log.info("job %s: worker shutting down; handed back to the queue: %s", job_id, released)
        return "released"
    except Stop:
        end = End(job_id, "cancelled")
    except InputError as e:  # SpecError too
        end = End(job_id, "failed", error=f"invalid input: {e}")
    except Exception as e:  # a failed job is a result, not a worker crash
        log.error("job %s failed:\n%s", job_id, traceback.format_exc())
        end = End(job_id, "failed", error=f"{type(e).__name__}: {e}")
    finally:
        heartbeat.stop()
    return conclude(settings, worker, [end])[0]
