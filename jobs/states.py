"""The job lifecycle: every state, every transition, and who makes it, in one file.

::

    submit ──> QUEUED ──claim──> RUNNING ──finish──> SUCCEEDED | FAILED | CANCELLED
                 ^  │              │  ^ progress (renews the lease)
                 │  │cancel        │  │ renew (a heartbeat thread, every lease / 3)
                 │  v              │  └ cancel (sets cancel_requested; the worker stops at its next check)
                 │ CANCELLED       │
                 ├──── release ────┤  the worker is shutting down (SIGTERM, Ctrl-C): hand the job back now
                 └──── requeue ────┤  reconciler: the lease ran out (the worker died) and attempts < max
                       give_up ────┤  reconciler: the lease ran out and attempts reached RVSM_MAX_ATTEMPTS -> FAILED
                       reap ───────┘  reconciler: the lease ran out on a job asked to cancel -> CANCELLED
    QUEUED ──redispatch──> QUEUED     reconciler: nobody claimed it by ``lease_until`` and its message may be lost

``lease_until`` is one deadline for whoever holds the job: for a ``running`` job, its worker's lease
(renewed by its heartbeat thread and its progress writes); for a ``queued`` job, the time by which
its broker message should have been claimed. Past it, the reconciler acts. Every write below is one
conditional UPDATE on the row (``WHERE id = ? AND state = ? AND ...``), so two actors racing for a
job cannot both win: a duplicate broker message is harmless (its claim misses), a lost one is
repaired by the reconciler.

A worker may hold several small toy jobs at once and run them as one batch (:mod:`worker.batches`):
``join_batch`` renames the holder of the job it claimed to a batch name (ending in :data:`BATCH`),
``claim_all``, ``renew_all`` and ``release_all`` move a set of jobs in one UPDATE, and progress and
finish take ``commit=False`` so that a batch writes all its jobs in one transaction. Each row still
makes its own transition under the same conditions. A job lost in a batch is requeued without the
attempt counted, and, started once, never joins a batch again.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple, cast

from sqlalchemy import CursorResult, Row, Update, and_, case, delete, func, insert, or_, select, update
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from . import counters
from .db import Artifact, Job, MetricPoint, utcnow


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


Q, R, S, F, C = JobState
TERMINAL = frozenset({S, F, C})

# event: (from states, to states, who makes it)
TRANSITIONS: dict[str, tuple[frozenset[JobState], frozenset[JobState], str]] = {
    "submit": (frozenset(), frozenset({Q}), "api"),
    "claim": (frozenset({Q}), frozenset({R}), "worker"),
    "progress": (frozenset({R}), frozenset({R}), "worker holding the lease"),
    "renew": (frozenset({R}), frozenset({R}), "worker holding the lease (a heartbeat while the job computes)"),
    "join_batch": (frozenset({R}), frozenset({R}), "worker holding the lease: it takes batch-mates (worker.batches)"),
    "finish": (frozenset({R}), TERMINAL, "worker holding the lease"),
    "release": (frozenset({R}), frozenset({Q}), "worker holding the lease, shutting down"),
    "cancel": (frozenset({Q, R}), frozenset({C, R}), "api (a running job only gets cancel_requested)"),
    "requeue": (frozenset({R}), frozenset({Q}), "reconciler: lease expired, attempts left"),
    "give_up": (frozenset({R}), frozenset({F}), "reconciler: lease expired, no attempts left"),
    "reap": (frozenset({R}), frozenset({C}), "reconciler: lease expired, cancel requested"),
    "redispatch": (frozenset({Q}), frozenset({Q}), "reconciler: unclaimed past its deadline"),
}


UNCOUNTED = frozenset({"progress", "renew", "join_batch"})
"""Events not counted in ``rvsm_job_transitions`` (they happen every few seconds of every running job)."""


def allowed(event: str, src: str, dst: str) -> bool:
    """Whether ``event`` may move a job from ``src`` to ``dst`` (the table above is the rule)."""
    if event not in TRANSITIONS:
        raise ValueError(f"unknown event {event!r}; known: {sorted(TRANSITIONS)}")
    froms, tos, _ = TRANSITIONS[event]
    return src in froms and dst in tos


def _move(session: Session, event: str, job_id: str, *where: ColumnElement[bool], **values: object) -> bool:
    """One conditional UPDATE for ``event``: the row must be in one of the event's source states and
    match ``where``; ``True`` when this call made the transition. Does not commit."""
    return _move_all(session, event, [job_id], *where, **values) == 1


def _move_all(session: Session, event: str, ids: list[str], *where: ColumnElement[bool], **values: object) -> int:
    """:func:`_move` for every job of ``ids`` in one UPDATE; how many moved."""
    moved = cast(CursorResult, session.execute(_transition(event, ids, where, values))).rowcount
    if moved and event not in UNCOUNTED:
        counters.bump(session, "transition", moved, event=event)
    return moved


def _move_returning(
    session: Session, event: str, job_id: str, *where: ColumnElement[bool], returning: tuple, **values: object
) -> Row | None:
    """:func:`_move`, returning the columns ``returning`` of the row after the move (``None``: it did not move)."""
    rows = _move_all_returning(session, event, [job_id], *where, returning=returning, **values)
    return rows[0] if rows else None


def _move_all_returning(
    session: Session, event: str, ids: list[str], *where: ColumnElement[bool], returning: tuple, **values: object
) -> list[Row]:
    """:func:`_move_all`, returning the columns ``returning`` of each row that moved, as it is after the move."""
    rows = list(session.execute(_transition(event, ids, where, values).returning(*returning)))
    if rows and event not in UNCOUNTED:
        counters.bump(session, "transition", len(rows), event=event)
    return rows


def _transition(event: str, ids: list[str], where: tuple[ColumnElement[bool], ...], values: dict) -> Update:
    froms, tos, _ = TRANSITIONS[event]
    target = values.get("state")
    if isinstance(target, str) and target not in tos:  # the table is the rule, also for this module's own code
        raise ValueError(f"{event} cannot move a job to {target!r}; it moves to {sorted(tos)}")
    stmt = update(Job).where(Job.id.in_(ids), Job.state.in_([str(s) for s in froms]), *where).values(**values)
    # no in-session sync: the caller reads rows back after its commit (which expires them); "evaluate" matched
    # the criteria against every object in the session, quadratic in a batch that adds trace points and artifacts
    return stmt.execution_options(synchronize_session=False)


def _after(seconds: float) -> dt.datetime:
    return utcnow() + dt.timedelta(seconds=seconds)


def _held_by(worker: str) -> ColumnElement[bool]:
    return Job.worker == worker


# ----------------------------------------------------------------------------- api
def new_job(
    session: Session, *, kind: str, spec: dict, owner: str | None, queue: str, max_iters: int, dispatch_s: float
) -> Job:
    """submit: a queued row whose message should be claimed within ``dispatch_s`` (else it is published again)."""
    return new_jobs(session, kind=kind, specs=[(spec, max_iters)], owner=owner, queue=queue, dispatch_s=dispatch_s)[0]


def new_jobs(
    session: Session,
    *,
    kind: str,
    specs: list[tuple[dict, int]],
    owner: str | None,
    queue: str,
    dispatch_s: float,
) -> list[Job]:
    """submit, for each ``(spec, max_iters)``: queued rows, in one transaction (all or none)."""
    lease = _after(dispatch_s)
    jobs = [
        Job(
            id=uuid.uuid4().hex,
            kind=kind,
            spec=spec,
            owner=owner,
            queue=queue,
            max_iters=n,
            state=str(Q),
            lease_until=lease,
        )
        for spec, n in specs
    ]
    session.add_all(jobs)
    counters.bump(session, "transition", len(jobs), event="submit")
    session.commit()
    return jobs


def request_cancel(session: Session, job: Job) -> Job:
    """cancel: a queued job ends at once; a running one is asked to stop (its worker checks between
    steps; if that worker is gone, the reconciler ends it when the lease runs out)."""
    now = utcnow()
    if not _move(
        session,
        "cancel",
        job.id,
        Job.state == str(Q),
        state=str(C),
        cancel_requested=True,
        finished_at=now,
        lease_until=None,
    ):
        _move(session, "cancel", job.id, Job.state == str(R), cancel_requested=True)
    session.commit()
    session.refresh(job)
    return job


# ----------------------------------------------------------------------------- worker
class Claimed(NamedTuple):
    """A job just claimed, and whether this was its first claim ever (never started before)."""

    job: Job
    first: bool


def claim(session: Session, job_id: str, worker: str, lease_s: float) -> Claimed | None:
    """claim: take a queued job for ``worker`` under a lease. ``None``: not ours to run (finished,
    cancelled, deleted, or running under another worker, whose lease the reconciler watches). A job
    seen not queued is passed over with a read alone (no write lock): the messages of jobs that ran in
    another's batch cost little."""
    seen = session.execute(select(Job.state, Job.started_at).where(Job.id == job_id)).first()
    if seen is None or seen.state != str(Q):
        session.rollback()  # end the read transaction
        return None
    if not claim_all(session, [job_id], worker, lease_s):
        return None
    job = session.get(Job, job_id, populate_existing=True)  # None only if deleted since: its worker stops
    return Claimed(job, seen.started_at is None) if job is not None else None


def claim_all(session: Session, ids: list[str], worker: str, lease_s: float) -> list[str]:
    """claim every job of ``ids`` that is still queued (one UPDATE, one commit); the ids this worker now holds."""
    now = utcnow()
    moved = _move_all(
        session,
        "claim",
        ids,
        Job.cancel_requested.is_(False),
        state=str(R),
        worker=worker,
        lease_until=now + dt.timedelta(seconds=lease_s),
        attempts=Job.attempts + 1,
        started_at=func.coalesce(Job.started_at, now),
        error=None,
    )
    session.commit()
    if moved in (0, len(ids)):
        return list(ids) if moved else []
    held = set(session.scalars(select(Job.id).where(Job.id.in_(ids), Job.state == str(R), _held_by(worker))))
    return [i for i in ids if i in held]


BATCH = "+batch"
"""The end of the holder's name while a worker runs several jobs as one batch (:func:`join_batch`)."""


def in_batch(worker: str | None) -> bool:
    return worker is not None and worker.endswith(BATCH)


def batch_candidates(session: Session, *, queue: str, max_iters: int, limit: int) -> list[tuple[str, dict]]:
    """Queued toy jobs on ``queue`` with this ``max_iters`` that were never started (a job whose worker was
    lost, or that was handed back, runs alone), oldest first: ``(id, spec)`` for a worker to pick batch-mates from."""
    q = (
        select(Job.id, Job.spec)
        .where(
            Job.state == str(Q),
            Job.queue == queue,
            Job.kind == "toy",
            Job.max_iters == max_iters,
            Job.started_at.is_(None),
            Job.cancel_requested.is_(False),
        )
        .order_by(Job.created_at)
        .limit(limit)
    )
    return [(i, spec) for i, spec in session.execute(q).all()]


def join_batch(session: Session, job_id: str, worker: str, lease_s: float) -> str | None:
    """The job ``worker`` holds becomes the first of a batch: held from now on under ``worker + BATCH`` (the name
    its mates are claimed under, so that the reconciler knows a lost batch); that name, or ``None`` if not held."""
    batch = worker + BATCH
    ok = _move(session, "join_batch", job_id, _held_by(worker), worker=batch, lease_until=_after(lease_s))
    session.commit()
    return batch if ok else None


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
    commit: bool = True,
) -> bool:
    """progress: write progress and new trace points and renew the lease. ``False``: stop, the job was
    cancelled, deleted or taken from this worker. ``commit=False``: the caller commits (a worker running
    several jobs as one batch writes them all in one transaction)."""
    with session.no_autoflush:
        row = _move_returning(
            session,
            "progress",
            job_id,
            _held_by(worker),
            Job.cancel_requested.is_(False),
            progress=progress,
            iteration=iteration,
            max_iters=max_iters,
            eta_s=eta_s,
            lease_until=_after(lease_s),
            metrics_seq=Job.metrics_seq + len(points),
            returning=(Job.metrics_seq,),
        )
        if row is not None:
            _add_points(session, [(job_id, row.metrics_seq, points)])
    if commit:
        session.commit()
    return row is not None


def _add_points(session: Session, batches: list[tuple[str, int, list[dict]]]) -> None:
    """Each ``(job_id, last_seq, points)``: the job's trace points numbered up to ``last_seq`` (its ``metrics_seq``
    after the move that counted them), all inserted in one executemany (no ORM object per point)."""
    rows = [
        dict(job_id=job_id, seq=last - len(points) + 1 + i, data=p)
        for job_id, last, points in batches
        for i, p in enumerate(points)
    ]
    if rows:
        session.execute(insert(MetricPoint), rows)


def renew(session: Session, job_id: str, worker: str, lease_s: float) -> bool:
    """renew: extend the lease of a job this worker holds. A lease so means "its worker process is
    alive", whatever the job is doing (loading data, a long epoch). ``False``: no longer held."""
    return renew_all(session, [job_id], worker, lease_s) == 1


def renew_all(session: Session, ids: list[str], worker: str, lease_s: float) -> int:
    """:func:`renew` for every job of ``ids`` (one UPDATE, one commit); how many are still held."""
    n = _move_all(session, "renew", ids, _held_by(worker), lease_until=_after(lease_s))
    session.commit()
    return n


@dataclass
class Outcome:
    """How one job ends (:func:`finish_all`): its terminal state, and what it leaves."""

    job_id: str
    state: str
    error: str | None = None
    result_path: str | None = None
    summary: dict | None = None
    artifacts: list[Artifact] = field(default_factory=list)
    points: list[dict] = field(default_factory=list)  # trace points not yet written (a batch's last ones)


def finish(session: Session, job_id: str, worker: str, *, state: str, commit: bool = True, **leaves: Any) -> bool:
    """finish: :func:`finish_all` for one job (``leaves``: the other fields of :class:`Outcome`), committed
    unless ``commit=False``."""
    done = finish_all(session, worker, [Outcome(job_id, state, **leaves)])[0]
    if commit:
        session.commit()
    return done


def finish_all(session: Session, worker: str, outcomes: list[Outcome]) -> list[bool]:
    """finish, for each of ``outcomes``: a job this worker holds ends in its state with its artifacts and its
    last trace points (a job asked to cancel that succeeds anyway ends cancelled); ``False`` where the job is
    no longer this worker's. The caller commits: a worker that ran several jobs as one batch ends them in one
    transaction and a handful of statements, whatever their number: one conditional UPDATE per end state
    (the transition), then each moved row's own fields by primary key in one executemany, one DELETE of
    earlier attempts' artifact rows, and the new rows inserted together at the flush."""
    for o in outcomes:
        if o.state not in TERMINAL:
            raise ValueError(f"state must be one of {sorted(TERMINAL)}, got {o.state!r}")
    with session.no_autoflush:
        rows: dict[str, Row] = {}
        for state in sorted({o.state for o in outcomes}):
            ids = [o.job_id for o in outcomes if o.state == state]
            rows |= {r.id: r for r in _finish_rows(session, worker, state, ids)}
        moved = [o for o in outcomes if o.job_id in rows]
        if moved:
            session.execute(update(Job), [_own_fields(o, rows[o.job_id]) for o in moved])
            stmt = delete(Artifact).where(Artifact.job_id.in_([o.job_id for o in moved]))
            session.execute(stmt.execution_options(synchronize_session=False))
        _add_points(session, [(o.job_id, rows[o.job_id].metrics_seq + len(o.points), o.points) for o in moved])
        for o in moved:
            row = rows[o.job_id]
            session.add_all(o.artifacts)
            counters.observe_run(session, row.kind, row.state, row.started_at, row.finished_at)
    return [o.job_id in rows for o in outcomes]


def _finish_rows(session: Session, worker: str, state: str, ids: list[str]) -> list[Row]:
    """The transition of ``ids`` (held by ``worker``) to ``state``: the rows that moved, as they are now."""
    values: dict = dict(finished_at=utcnow(), lease_until=None)
    values["state"] = case((Job.cancel_requested.is_(True), str(C)), else_=state) if state == S else state
    if state == S:
        values.update(progress=1.0, eta_s=0.0)
    returning = (Job.id, Job.kind, Job.state, Job.started_at, Job.finished_at, Job.metrics_seq)
    return _move_all_returning(session, "finish", ids, _held_by(worker), returning=returning, **values)


def _own_fields(o: Outcome, row: Row) -> dict:
    """The fields of a finished job that are its own (the UPDATE by primary key after its transition)."""
    fields = dict(id=o.job_id, error=o.error, result_path=o.result_path, summary=o.summary)
    fields["metrics_seq"] = row.metrics_seq + len(o.points)
    if o.state == S and o.summary and "iters" in o.summary:
        fields["iteration"] = o.summary["iters"]
    return fields


def release(session: Session, job_id: str, worker: str) -> bool:
    """release: a worker that is shutting down hands its job back at once (no wait for the lease), and the
    attempt its claim counted is refunded (a hand-back is not a loss); the reconciler publishes it again, and a
    checkpoint job resumes from its last saved epoch."""
    return release_all(session, [job_id], worker) == 1


def release_all(session: Session, ids: list[str], worker: str) -> int:
    """:func:`release` for every job of ``ids`` (one UPDATE, one commit); how many were handed back."""
    n = _move_all(
        session,
        "release",
        ids,
        _held_by(worker),
        Job.cancel_requested.is_(False),
        state=str(Q),
        worker=None,
        lease_until=utcnow(),
        attempts=Job.attempts - 1,
    )
    session.commit()
    return n


# ----------------------------------------------------------------------------- reconciler
def expired(session: Session, limit: int = 500) -> list[Job]:
    """Running jobs whose worker has been silent past its lease."""
    q = select(Job).where(Job.state == str(R), Job.lease_until < utcnow()).order_by(Job.lease_until).limit(limit)
    return list(session.scalars(q).all())


def recover(session: Session, job: Job, *, max_attempts: int, dispatch_s: float) -> str | None:
    """The transition for a running job whose lease ran out: ``reap`` (cancel was asked),
    ``give_up`` (``attempts`` reached ``max_attempts``) or ``requeue``. Returns the event made, or
    ``None`` when another reconciler (or a late progress write) got there first. A job lost in a batch
    is requeued without the attempt counted: it has been started, so it never joins a batch again, and a
    poison job among its mates then kills only runs of its own (:func:`batch_candidates`)."""
    now = utcnow()
    stale = (Job.lease_until == job.lease_until, Job.lease_until < now)
    if job.cancel_requested:
        event, values = "reap", dict(state=str(C), finished_at=now, lease_until=None)
    elif in_batch(job.worker):  # not charged, whatever the cap (who killed the batch is unknown); alone from now on
        event, values = (
            "requeue",
            dict(
                state=str(Q), worker=None, lease_until=now + dt.timedelta(seconds=dispatch_s), attempts=Job.attempts - 1
            ),
        )
    elif job.attempts >= max_attempts:
        error = (
            f"the worker running this job was lost {job.attempts} times (killed, out of memory or "
            f"crashed); gave up after RVSM_MAX_ATTEMPTS={max_attempts} attempts"
        )
        event, values = "give_up", dict(state=str(F), finished_at=now, lease_until=None, error=error)
    else:
        event, values = "requeue", dict(state=str(Q), worker=None, lease_until=now + dt.timedelta(seconds=dispatch_s))
    ok = _move(session, event, job.id, *stale, **values)
    session.commit()
    return event if ok else None


def _late() -> ColumnElement[bool]:
    """Past its deadline (``NULL``: a row from before deadlines were kept)."""
    return or_(Job.lease_until.is_(None), Job.lease_until < utcnow())


def unclaimed(session: Session, limit: int = 500) -> list[Job]:
    """Queued jobs that nobody claimed by their deadline (``lease_until``; ``NULL``: rows from before it)."""
    q = select(Job).where(and_(Job.state == str(Q), _late())).order_by(Job.created_at).limit(limit)
    return list(session.scalars(q).all())


def queued_count(session: Session, queue: str) -> int:
    return session.scalar(select(func.count()).where(Job.state == str(Q), Job.queue == queue)) or 0


def redispatch(session: Session, job: Job, dispatch_s: float) -> bool:
    """redispatch: move a late queued job's deadline on; ``True``: this caller (the first to) should publish it."""
    ok = _move(session, "redispatch", job.id, _late(), lease_until=_after(dispatch_s))
    session.commit()
    return ok


# reads (no transition): the API's listings and the worker's lookups
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
