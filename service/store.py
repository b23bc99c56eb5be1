"""Job-store reads and bookkeeping shared by the API and the workers (SQLAlchemy only).

State changes (submit, claim, progress, finish, cancel, and the reconciler's) live in
:mod:`service.states`, the one file that holds the job lifecycle; they are re-exported here.
"""

from __future__ import annotations

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from .db import Artifact, Job, MetricPoint
from .states import (
    batch_candidates,
    claim,
    claim_all,
    finish,
    join_batch,
    new_job,
    release,
    release_all,
    renew,
    renew_all,
    report_progress,
    request_cancel,
)

__all__ = ["new_job", "get_job", "list_jobs", "claim", "claim_all", "batch_candidates", "join_batch", "report_progress",
           "renew", "renew_all", "finish", "release", "release_all", "request_cancel", "metric_points", "artifacts",
           "delete_job"]  # fmt: skip


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
