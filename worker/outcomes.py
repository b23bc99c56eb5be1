"""How a job ends: its summary for gates, its files recorded as artifacts, and the finish written to the
store (for one job, or for a batch in one transaction), with the test-only poison drill.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
from pathlib import Path

import orjson

from jobs import states
from jobs.db import Artifact, Job, get_sessionmaker
from jobs.layout import job_dir, record, resume_path
from jobs.settings import Settings

log = logging.getLogger("rvsm.worker")
# Test-only fault injection, never reachable through the API: a file listing job ids (one a line);
# a worker that claims one of them SIGKILLs itself, like a job that runs out of memory every time.
POISON_ENV = "RVSM_TEST_POISON_FILE"


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


def result_json(result: dict) -> bytes:
    """A toy result as strict JSON (orjson: a large sweep's summaries in a fraction of ``json.dumps``'s
    time; a non-finite float, which the result should not hold anyway, would be written as null)."""
    return orjson.dumps(result)


def save(settings: Settings, job_id: str, files: dict[str, bytes]) -> list[Artifact]:
    """Write ``files`` as ``job_id``'s artifacts (atomically); their rows, for :func:`conclude`."""
    return [record(settings.resolved_artifact_dir, job_id, name, data) for name, data in files.items()]


End = states.Outcome  # how one job ends: its state and what it leaves (jobs.states.finish_all)


def conclude(settings: Settings, worker: str, ends: list[End]) -> list[str]:
    """Finish every job of ``ends`` in one transaction; each one's outcome: its state, or ``dropped`` when
    the job is no longer this worker's (then a deleted job's files are removed too)."""
    sessions = get_sessionmaker(settings.resolved_database_url)
    with sessions() as s:
        done = states.finish_all(s, worker, ends)
        s.commit()
    outcomes = []
    for e, ok in zip(ends, done, strict=True):
        if not ok:
            log.info("job %s: no longer held by %s; outcome %s dropped", e.job_id, worker, e.state)
            with sessions() as s:
                gone = s.get(Job, e.job_id) is None
            if gone:  # deleted while it ran: leave no files behind
                shutil.rmtree(job_dir(settings.resolved_artifact_dir, e.job_id), ignore_errors=True)
            outcomes.append("dropped")
            continue
        if e.state != "failed":  # a finished job needs no resume point (a failed one keeps it for a retry)
            resume_path(settings.resolved_artifact_dir, e.job_id).unlink(missing_ok=True)
        log.info("job %s: %s", e.job_id, e.state)
        outcomes.append(e.state)
    return outcomes


def poison_check(job_id: str) -> None:
    """Test-only (see ``POISON_ENV``): die the way an out-of-memory kill does, with no cleanup."""
    path = os.environ.get(POISON_ENV)
    if path and job_id in Path(path).read_text().split():
        log.warning("job %s: test poison: SIGKILL to this worker", job_id)
        os.kill(os.getpid(), signal.SIGKILL)
