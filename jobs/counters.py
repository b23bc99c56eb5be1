"""What the service counts, kept in the job store (the collector that serves it: :mod:`service.telemetry`).

The job database is the scheduler of record, and API and workers are separate processes (several
workers, maybe on several machines), so process-local counters would each see a part. What the
service counts lives in the store instead:

- ``rvsm_counters``: monotonic counters, bumped in the same transaction as the thing they count
  (a lifecycle transition, a run's duration into histogram buckets), so a rolled-back transition is
  not counted. A transaction's bumps are summed per series and written when it commits, one atomic
  upsert per series in key order (a worker ending a batch of jobs writes each bucket once; no
  read-modify-write race, and no lock-order deadlock, between processes).
- ``rvsm_workers``: one row per worker process, its heartbeat written by its reconciler thread.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from sqlalchemy import event, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from .db import Base, Counter, WorkerBeat, utcnow

RUN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)
"""Upper bounds (seconds) of the run-duration histogram: a toy run takes milliseconds, a checkpoint job hours."""
RECONCILER_EVENTS = ("requeue", "give_up", "reap", "redispatch", "publish_failed")
SEP = "|"


def _key(name: str, labels: dict[str, str]) -> str:
    return name + SEP + ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def parse_key(key: str) -> tuple[str, dict[str, str]]:
    name, _, rest = key.partition(SEP)
    return name, dict(p.split("=", 1) for p in rest.split(",") if p)


def _upsert(session: Session, table: type[Base], values: dict, update: dict) -> None:
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(table).values(**values)
    pk = [c.name for c in table.__table__.primary_key]
    session.execute(stmt.on_conflict_do_update(index_elements=pk, set_=update))


PENDING = "rvsm_counter_bumps"  # Session.info key: this transaction's bumps, summed per series


def bump(session: Session, name: str, n: float = 1.0, **labels: str) -> None:
    """Add ``n`` to a counter in the caller's transaction: written when it commits, dropped if it rolls back."""
    session.connection()  # in a transaction now, so that a rollback (after_soft_rollback) drops the bump
    pending = session.info.setdefault(PENDING, {})
    key = _key(name, labels)
    pending[key] = pending.get(key, 0.0) + n


@event.listens_for(Session, "before_commit")
def _write_bumps(session: Session) -> None:
    for key, n in sorted(session.info.pop(PENDING, {}).items()):
        _upsert(session, Counter, {"key": key, "value": n}, {"value": Counter.value + n})


@event.listens_for(Session, "after_soft_rollback")
def _drop_bumps(session: Session, _previous: object) -> None:
    session.info.pop(PENDING, None)


def observe_run(
    session: Session, kind: str, state: str, started_at: dt.datetime | None, finished_at: dt.datetime | None
) -> None:
    """Add a finished job's run time (``finished_at - started_at``) to the run-duration histogram."""
    if started_at is None or finished_at is None:
        return
    seconds = max((finished_at - started_at).total_seconds(), 0.0)
    for le in RUN_BUCKETS:
        if seconds <= le:
            bump(session, "run_seconds_bucket", le=repr(float(le)), kind=kind, state=state)
    bump(session, "run_seconds_count", kind=kind, state=state)
    bump(session, "run_seconds_sum", seconds, kind=kind, state=state)


def heartbeat(session: Session, *, name: str, queues: Iterable[str], interval_s: float, pid: int) -> None:
    """A worker is alive: write its row (and forget workers silent for a day)."""
    values = {"name": name, "queues": ",".join(queues), "seen_at": utcnow(), "interval_s": interval_s, "pid": pid}
    _upsert(session, WorkerBeat, values, {"seen_at": values["seen_at"], "interval_s": interval_s})
    session.query(WorkerBeat).filter(WorkerBeat.seen_at < utcnow() - dt.timedelta(days=1)).delete()
    session.commit()


def live_workers(session: Session) -> list[WorkerBeat]:
    """The workers with a heartbeat within three of their sweep intervals."""
    now = utcnow()
    return [w for w in session.scalars(select(WorkerBeat)) if w.seen_at + dt.timedelta(seconds=3 * w.interval_s) > now]
