"""Job-store operations shared by the API and the workers (SQLAlchemy only).

A worker *claims* a job with one conditional UPDATE: it gets the job if it is queued, or running
under a lease that has run out (its worker died). A redelivered message for a job that finished,
or that a live worker holds, claims nothing and is dropped, so a job runs to completion once.
"""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.orm import Session

from .db import TERMINAL, Artifact, Job, MetricPoint, utcnow


def new_job(session: Session, *, kind: str, spec: dict, owner: str | None, queue: str, max_iters: int) -> Job:
    job = Job(id=uuid.uuid4().hex, kind=kind, spec=spec, owner=owner, queue=queue, max_iters=max_iters)
    session.add(job)
    session.commit()
    return job


def get_job(session: Session, job_id: str, owner: str | None = None) -> Job | None:
    job = session.get(Job, job_id)
    if job is None or (owner is not None and job.owner != owner):
        return None
    return job


def list_jobs(
    session: Session, *, owner: str | None, state: str | None, limit: int, offset: int
) -> tuple[list[Job], int]:
    q = select(Job)
    if owner is not None:
        q = q.where(Job.owner == owner)
    if state is not None:
        q = q.where(Job.state == state)
    total = session.scalar(select(func.count()).select_from(q.subquery())) or 0
    rows = session.scalars(q.order_by(Job.created_at.desc(), Job.id).limit(limit).offset(offset)).all()
    return list(rows), total


def claim(session: Session, job_id: str, worker: str, lease_s: float) -> Job | None:
    """Take ``job_id`` for ``worker``: queued, or running with an expired lease. ``None``: not ours to run."""
    now = utcnow()
    res = session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.cancel_requested.is_(False),
            or_(Job.state == "queued", (Job.state == "running") & (Job.lease_until < now)),
        )
        .values(
            state="running",
            worker=worker,
            lease_until=now + dt.timedelta(seconds=lease_s),
            attempts=Job.attempts + 1,
            started_at=func.coalesce(Job.started_at, now),
            error=None,
        )
    )
    session.commit()
    if res.rowcount != 1:
        return None
    return session.get(Job, job_id, populate_existing=True)


def report_progress(
    session: Session,
    job_id: str,
    worker: str,
    *,
    lease_s: float,
    progress: float,
    iteration: int,
    max_iters: int,
    eta_s: float | None,
    points: list[dict],
) -> bool:
    """Write progress and new trace points, extend the lease. Returns ``False`` when the worker
    should stop: the job was cancelled, deleted, or taken over by another worker."""
    job = session.get(Job, job_id, populate_existing=True)
    if job is None or job.worker != worker or job.state != "running" or job.cancel_requested:
        return False
    seq = job.metrics_seq
    for p in points:
        seq += 1
        session.add(MetricPoint(job_id=job_id, seq=seq, data=p))
    job.metrics_seq = seq
    job.progress, job.iteration, job.max_iters, job.eta_s = progress, iteration, max_iters, eta_s
    job.lease_until = utcnow() + dt.timedelta(seconds=lease_s)
    session.commit()
    return True


def finish(
    session: Session,
    job_id: str,
    worker: str,
    *,
    state: str,
    error: str | None = None,
    result_path: str | None = None,
    summary: dict | None = None,
    artifacts: list[Artifact] | None = None,
) -> bool:
    """Move a job this worker holds to a terminal state, with its artifacts. ``False``: not held."""
    if state not in TERMINAL:
        raise ValueError(f"state must be one of {TERMINAL}, got {state!r}")
    job = session.get(Job, job_id, populate_existing=True)
    if job is None or job.worker != worker or job.state != "running":
        return False
    job.state = "cancelled" if job.cancel_requested and state == "succeeded" else state
    job.error, job.result_path, job.summary = error, result_path, summary
    job.finished_at = utcnow()
    job.lease_until = None
    if state == "succeeded":
        job.progress = 1.0
        job.eta_s = 0.0
        if summary and "iters" in summary:
            job.iteration = summary["iters"]
    session.execute(delete(Artifact).where(Artifact.job_id == job_id))
    for a in artifacts or []:
        session.add(a)
    session.commit()
    return True


def request_cancel(session: Session, job: Job) -> Job:
    """Cancel a queued job at once; ask a running one to stop (its worker checks between iterations)."""
    if job.state in TERMINAL:
        return job
    job.cancel_requested = True
    if job.state == "queued":
        job.state = "cancelled"
        job.finished_at = utcnow()
    session.commit()
    return job


def metric_points(session: Session, job_id: str, since: int, limit: int) -> list[MetricPoint]:
    q = select(MetricPoint).where(MetricPoint.job_id == job_id, MetricPoint.seq > since)
    return list(session.scalars(q.order_by(MetricPoint.seq).limit(limit)).all())


def artifacts(session: Session, job_id: str) -> list[Artifact]:
    return list(session.scalars(select(Artifact).where(Artifact.job_id == job_id).order_by(Artifact.name)).all())


def delete_job(session: Session, job: Job) -> None:
    session.execute(delete(MetricPoint).where(MetricPoint.job_id == job.id))
    session.execute(delete(Artifact).where(Artifact.job_id == job.id))
    session.delete(job)
    session.commit()
