"""The job store: SQLAlchemy models and engine (SQLite by default, PostgreSQL by URL).

The job row is the source of truth for a job's state, progress, attempts, owner and result
location (its states and transitions: :mod:`jobs.states`); the Celery result backend is not
used. The API and the workers share this module (it imports no web framework).
"""

from __future__ import annotations

import datetime as dt
from functools import lru_cache
from pathlib import Path

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    create_engine,
    event,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from .settings import get_settings


def utcnow() -> dt.datetime:
    """Naive UTC (SQLite keeps no time zone; every timestamp here is UTC)."""
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class Job(Base):
    __tablename__ = "rvsm_jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str | None] = mapped_column(String(64), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16), index=True, default="queued")
    spec: Mapped[dict] = mapped_column(JSON)
    queue: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    iteration: Mapped[int] = mapped_column(Integer, default=0)
    max_iters: Mapped[int] = mapped_column(Integer, default=0)
    eta_s: Mapped[float | None] = mapped_column(Float)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    worker: Mapped[str | None] = mapped_column(String(128))
    # running: the worker's lease; queued: when its message should have been claimed (jobs.states)
    lease_until: Mapped[dt.datetime | None] = mapped_column(DateTime, index=True)
    result_path: Mapped[str | None] = mapped_column(String(512))
    summary: Mapped[dict | None] = mapped_column(JSON)
    metrics_seq: Mapped[int] = mapped_column(Integer, default=0)


class MetricPoint(Base):
    """One logged trace point of a running (or finished) job, in order of ``seq``."""

    __tablename__ = "rvsm_metric_points"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("rvsm_jobs.id", ondelete="CASCADE"), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    data: Mapped[dict] = mapped_column(JSON)


class Artifact(Base):
    __tablename__ = "rvsm_artifacts"

    job_id: Mapped[str] = mapped_column(ForeignKey("rvsm_jobs.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    path: Mapped[str] = mapped_column(String(512))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(Integer)
    media_type: Mapped[str] = mapped_column(String(64))


class Counter(Base):
    """One Prometheus counter series (:mod:`jobs.counters`): its name and labels as the key."""

    __tablename__ = "rvsm_counters"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    value: Mapped[float] = mapped_column(Float, default=0.0)


class WorkerBeat(Base):
    """A worker process's last heartbeat; alive while ``seen_at + 3 * interval_s`` is in the future."""

    __tablename__ = "rvsm_workers"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    queues: Mapped[str] = mapped_column(String(256))
    seen_at: Mapped[dt.datetime] = mapped_column(DateTime, index=True)
    interval_s: Mapped[float] = mapped_column(Float)
    pid: Mapped[int] = mapped_column(Integer)


def pool_options(threads: int) -> dict:
    """Connection-pool options for ``threads`` concurrent users (the API's threads, :class:`Settings.api_threads`):
    a core of at most 10 kept open, and overflow for the rest plus as many again (a session may hold its
    connection a moment after its thread is handed back, until the request's dependencies close it), so a
    request waits on the pool only when the threads are all busy anyway."""
    core = min(threads, 10)
    return {"pool_size": core, "max_overflow": 2 * threads - core, "pool_timeout": 30}


@lru_cache
def get_engine(url: str) -> Engine:
    """One engine per URL, its pool sized to ``api_threads`` (:func:`pool_options`). SQLite gets WAL and a
    busy timeout: API and workers write concurrently."""
    pool = pool_options(get_settings().api_threads)
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        memory = not path or path == ":memory:"
        if not memory:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, **({} if memory else pool)
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(conn, _record) -> None:  # noqa: ANN001
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

    else:
        # a host that drops packets (instead of refusing) costs a request 5 s, not the OS's TCP timeout
        connect = {"connect_timeout": 5} if url.startswith("postgresql") else {}
        engine = create_engine(url, pool_pre_ping=True, connect_args=connect, **pool)
    _create_tables(engine)
    return engine


def _create_tables(engine: Engine, attempts: int = 5) -> None:
    """``create_all``, which checks then creates, so the API and a worker starting together on a new database
    can both see a table missing and one of them fail with "already exists": then look again."""
    for i in range(attempts):
        try:
            Base.metadata.create_all(engine)
            return
        except DBAPIError as e:
            raced = "already exists" in str(e) or "duplicate key" in str(e)
            if not raced or i == attempts - 1:
                raise


@lru_cache
def get_sessionmaker(url: str) -> sessionmaker[Session]:
    return sessionmaker(get_engine(url), expire_on_commit=False)
