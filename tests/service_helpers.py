"""Real processes for the integration tests: Celery workers and the embedded server."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

from jobs.states import TERMINAL
from service.broker import redis_server
from service.cli import worker_argv

REDIS_URL = os.environ.get("RVSM_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get("RVSM_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
ROOT = Path(__file__).resolve().parent.parent
LONG_TOY = {
    "kind": "toy",
    "k": 2,
    "d": 50,
    "lam": 1e-4,
    "beta": 4e-3,
    "eta": 0.05,
    "penalty": "l1",
    "teacher": {"seed": 3},
    "init": {"seed": 4},
    "max_iters": 15000,
    "log_every": 50,
}
"""A toy job that runs for seconds at d = 50 (drills and progress tests cut ``max_iters`` to taste)."""


def unique_queue(prefix: str = "test") -> str:
    """Each test run gets its own Celery queue on the shared Redis, so runs never take each other's jobs."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def settings_for(tmp: Path, queue: str, **overrides: object):  # noqa: ANN201
    """Settings for a test's own store, artifact directory and queue (``overrides``: more Settings)."""
    from jobs.settings import Settings

    values: dict = dict(
        data_dir=tmp,
        database_url=f"sqlite:///{tmp / 'jobs.db'}",
        artifact_dir=tmp / "artifacts",
        broker_url=REDIS_URL,
        toy_queue=queue,
        checkpoint_queue=queue,
    )
    return Settings(**(values | overrides))


def app_for(tmp: Path, queue: str, **overrides: object):  # noqa: ANN201
    """The real ASGI app on :func:`settings_for` (through ``dependency_overrides``, as the routes read it)."""
    from jobs.settings import get_settings
    from service.main import create_app

    settings = settings_for(tmp, queue, **overrides)
    app = create_app()
    app.dependency_overrides[get_settings] = lambda: settings
    return app


def settings_of(client):  # noqa: ANN001, ANN201
    """The Settings a :func:`make_client` client's app runs with."""
    from jobs.settings import get_settings

    return client.app.dependency_overrides[get_settings]()


def make_client(tmp: Path, queue: str, **overrides: object):  # noqa: ANN201
    """A test client of :func:`app_for` (enter it to run the app's startup)."""
    from fastapi.testclient import TestClient

    return TestClient(app_for(tmp, queue, **overrides))


def service_env(tmp: Path, *, queue: str, database_url: str | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RVSM_")}
    env.update(
        RVSM_DATA_DIR=str(tmp),
        RVSM_DATABASE_URL=database_url or f"sqlite:///{tmp / 'jobs.db'}",
        RVSM_ARTIFACT_DIR=str(tmp / "artifacts"),
        RVSM_BROKER_URL=REDIS_URL,
        RVSM_TOY_QUEUE=queue,
        RVSM_PROGRESS_INTERVAL_S="0.2",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def drop_queue(queue: str) -> None:
    """Delete this test's own queue (and kombu's bindings for it) from the shared Redis, nothing else."""
    import redis

    redis.Redis.from_url(REDIS_URL).delete(queue, *(f"_kombu.{k}.{queue}" for k in ("binding", "binding_permanent")))


@contextmanager
def api_client(tmp: Path, name: str = "api", **settings: object) -> Iterator:
    """The API (:func:`make_client`) on a queue of its own that no worker consumes (its jobs stay queued)."""
    queue = unique_queue(name)
    try:
        with make_client(tmp, queue, **settings) as client:
            yield client
    finally:
        drop_queue(queue)


class Stack(NamedTuple):
    """The API and a real worker process on one queue, store and artifact directory (``tmp``)."""

    client: object  # fastapi.testclient.TestClient
    worker: Worker
    tmp: Path


@contextmanager
def api_and_worker(
    tmp: Path, name: str = "stack", *, env: dict[str, str] | None = None, **settings: object
) -> Iterator[Stack]:
    """:func:`api_client` with a real ``celery worker`` on its queue (``env``: more worker environment)."""
    queue = unique_queue(name)
    worker = Worker(service_env(tmp, queue=queue, **(env or {})), queue, tmp / "worker.log")
    try:
        with make_client(tmp, queue, **settings) as client:
            yield Stack(client, worker, tmp)
    finally:
        worker.stop()
        drop_queue(queue)


class Worker:
    """A real ``celery worker`` process (solo pool) on ``queue``; its log goes to a file."""

    def __init__(self, env: dict[str, str], queue: str, log: Path) -> None:
        self.log_path = log
        self.log = open(log, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            worker_argv(queue), env=env, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def kill(self) -> None:
        """SIGKILL the whole worker (no chance to ack, clean up or say goodbye)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


def wait_for(check: Callable[[], object], *, timeout: float, interval: float = 0.1, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def submit_job(client, spec: dict, **files: tuple[str, bytes]):  # noqa: ANN001, ANN201
    """``POST /v1/jobs`` as multipart: the spec as JSON, and any files (``checkpoint=(name, bytes)``, ...)."""
    return client.post("/v1/jobs", data={"spec": json.dumps(spec)}, files=files or None)


def wait_done(client, job_id: str, timeout: float = 300) -> dict:  # noqa: ANN001
    """The job once it is in one of the state machine's terminal states (``jobs.states.TERMINAL``)."""

    def check() -> dict | None:
        j = client.get(f"/v1/jobs/{job_id}").json()
        return j if j["state"] in TERMINAL else None

    return wait_for(check, timeout=timeout, what=f"job {job_id}")  # type: ignore[return-value]


def artifacts(client, job_id: str) -> dict[str, bytes]:  # noqa: ANN001
    """Every artifact of the job, by name."""
    names = [a["name"] for a in client.get(f"/v1/jobs/{job_id}/artifacts").json()]
    return {n: client.get(f"/v1/jobs/{job_id}/artifacts/{n}").content for n in names}


def python() -> str:
    return sys.executable


def start_serve(tmp: Path, port: int, *, log_name: str = "serve.log", **env: str) -> subprocess.Popen:
    """``rvsm serve`` in ``tmp`` (so its data directory is ``tmp/data``) with no configuration but ``env``,
    once ``/readyz`` answers 200; its output goes to ``tmp/log_name``."""
    import httpx
    import pytest

    clean = {k: v for k, v in os.environ.items() if not k.startswith("RVSM_")} | {"PYTHONPATH": str(ROOT)}
    with open(tmp / log_name, "wb") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--port", str(port)],
            cwd=tmp,
            env=clean | env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return proc.poll() is not None and pytest.fail((tmp / log_name).read_text())

    wait_for(ready, timeout=90, interval=0.3, what="rvsm serve to be ready")
    return proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A private Redis on a free port (no persistence): tests may flush, pause, kill and restart it
    without touching the shared one."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        argv = [redis_server(), "--port", str(self.port), "--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self.answers, timeout=10, what=f"redis on port {self.port}")

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def command(self, *args: str) -> bytes:
        """One command through a raw socket (RESP); returns the raw reply."""
        payload = f"*{len(args)}\r\n" + "".join(f"${len(a)}\r\n{a}\r\n" for a in args)
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            s.sendall(payload.encode())
            return s.recv(4096)

    def pause(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(timeout=10)

    def restart_empty(self) -> None:
        """Kill it and start it again on the same port with nothing in it (every message lost)."""
        self.kill()
        self.start()


def holder_pid(database_url: str, job_id: str) -> int | None:
    """The pid of the worker process holding a job, from the store (its ``worker`` is ``host:pid:tag``)."""
    from jobs.db import Job, get_sessionmaker

    with get_sessionmaker(database_url)() as s:
        job = s.get(Job, job_id)
        return int(job.worker.split(":")[1]) if job is not None and job.worker else None
