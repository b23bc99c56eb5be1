"""Small toy jobs run as one batch.

A toy job of one configuration costs a worker about as much alone as in a batch of dozens: at small
``d`` each iteration is a few dozen tensor operations whose fixed cost dominates. So a worker that claims
such a job also claims queued batch-mates from the store (the scheduler of record; their broker messages,
delivered later, find them claimed or done) and runs them all with :func:`rvsm.toy.run_batch`.

Each job keeps its own row, lease, progress, trace points, result file and finish, as if it ran alone
(its numbers equal to rounding in the last bits, as a sweep's rows; ``final.wall_time_s`` is the batch's).
Batch-mates must share ``max_iters`` (so a short job never waits on a long one, and each keeps the trace
grid it would have alone), never have been started (a job whose worker was lost, or that was handed back,
runs alone from then on), and together stay within the toy cap on
configurations x ``d``, and their traces within a sweep's total (:data:`rvsm.algorithms.TRACE_POINTS_TOTAL`).
``RVSM_BATCH_JOBS`` caps the jobs of one batch (1: no batching). A batch is held under one name ending in
:data:`jobs.states.BATCH`; if its worker is lost, the reconciler requeues its jobs without counting the
attempt (nobody knows which job killed it), and each runs alone after: a poison job then fails by itself,
having cost its mates a rerun and no attempt.
"""

from __future__ import annotations

import logging
import traceback

from sqlalchemy.orm import Session

from jobs import states
from jobs.db import Job, get_sessionmaker
from jobs.layout import RESULTS, result_path
from jobs.settings import Settings
from rvsm.algorithms import TRACE_POINTS_PER_RUN, TRACE_POINTS_TOTAL
from rvsm.toy import SpecError, config_from_spec, run_batch

from .outcomes import End, conclude, poison_check, result_json, save, summarize_toy
from .progress import Released, Reporter, Stop

log = logging.getLogger("rvsm.worker")


def batchable(spec: dict) -> bool:
    """One configuration (no sweep), no time budget (a job-wide clock) and the population gradient (an
    empirical job's samples make a batch of their own)."""
    return (
        "sweep" not in spec
        and spec.get("time_budget_s") is None
        and spec.get("gradient", "population") == "population"
        and isinstance(spec.get("d"), int)
    )


def claim_mates(
    session: Session, settings: Settings, worker: str, job: Job, *, first: bool
) -> tuple[list[tuple[str, dict]], str]:
    """Claim queued jobs to run as one batch with ``job`` (just claimed by ``worker``, for the ``first`` time):
    ``([(id, spec)], holder)``, oldest first, and the name the batch is held under (``job``'s too, from now
    on: :func:`jobs.states.join_batch`); no mates unless ``job`` is a batchable toy job never started before."""
    # the batch's traces stay within what one sweep may keep (each run may log up to max_iters + 1 points)
    most = min(settings.batch_jobs, TRACE_POINTS_TOTAL // min(TRACE_POINTS_PER_RUN, job.max_iters + 1))
    if most < 2 or not first or job.kind != "toy" or not batchable(job.spec):
        return [], worker
    widest: int = job.spec["d"]
    chosen: list[tuple[str, dict]] = []
    for job_id, spec in states.batch_candidates(session, queue=job.queue, max_iters=job.max_iters, limit=2 * most):
        width = max(widest, spec["d"]) if batchable(spec) else 0
        if not width or (len(chosen) + 2) * width > settings.toy_elements_cap:
            continue
        chosen.append((job_id, spec))
        widest = width
        if len(chosen) + 1 == most:
            break
    batch = states.join_batch(session, job.id, worker, settings.lease_s) if chosen else None
    if batch is None:
        return [], worker
    held = set(states.claim_all(session, [j for j, _ in chosen], batch, settings.lease_s))
    return [(j, spec) for j, spec in chosen if j in held], batch


def run_together(settings: Settings, worker: str, jobs: list[tuple[str, dict]]) -> list[str] | None:
    """Run claimed toy jobs ``[(id, spec)]`` as one batch and end each; their outcomes in order, or
    ``None`` when the batch failed as a whole (the caller then runs each alone)."""
    for job_id, _ in jobs:
        poison_check(job_id)
    ends: dict[str, End] = {}
    runnable = []
    for job_id, spec in jobs:
        try:
            runnable.append((job_id, config_from_spec(spec)))
        except SpecError as e:
            ends[job_id] = End(job_id, "failed", error=f"invalid input: {e}")
    for job_id, _ in jobs:  # a line per job, as alone (the drill reads them)
        log.info("job %s: running (toy, in a batch of %d) as %s", job_id, len(jobs), worker)
    if runnable:
        reporter = Reporter(settings, [j for j, _ in runnable], worker)
        results: list[dict | None]
        try:
            reporter.check_shutdown()
            results = list(run_batch([c for _, c in runnable], device=settings.device, callback=reporter))
            reporter.check_shutdown()  # the last points are written with each finish, not in a flush of their own
        except Released:
            with get_sessionmaker(settings.resolved_database_url)() as s:
                n = states.release_all(s, [j for j, _ in jobs], worker)
            log.info("jobs %s and %d more: worker shutting down; %d handed back", jobs[0][0], len(jobs) - 1, n)
            return ["released"] * len(jobs)
        except Stop:  # every job was cancelled, deleted or taken over
            results = [None] * len(runnable)
        except Exception:
            log.error(
                "jobs %s and %d more: the batch failed; running each alone:\n%s",
                jobs[0][0],
                len(jobs) - 1,
                traceback.format_exc(),
            )
            return None
        for (job_id, _), result in zip(runnable, results, strict=True):
            ends[job_id] = _end(settings, job_id, None if job_id in reporter.stopped else result)
            ends[job_id].points = reporter.take(job_id)
    return conclude(settings, worker, [ends[j] for j, _ in jobs])


def _end(settings: Settings, job_id: str, result: dict | None) -> End:
    """How one job of a batch ends; ``result`` ``None``: it was cancelled, deleted or taken over meanwhile."""
    if result is None:
        return End(job_id, "cancelled")
    arts = save(settings, job_id, {RESULTS["toy"]: result_json(result)})
    return End(
        job_id, "succeeded", result_path=result_path(job_id, "toy"), summary=summarize_toy(result), artifacts=arts
    )
