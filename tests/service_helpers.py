"""Real processes for the integration tests: Celery workers and the embedded server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from service.cli import worker_argv

REDIS_URL = os.environ.get("RVSM_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get("RVSM_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
ROOT = Path(__file__).resolve().parent.parent


def unique_queue(prefix: str = "test") -> str:
    """Each test run gets its own Celery queue on the shared Redis, so runs never take each other's jobs."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def make_client(tmp: Path, queue: str, **overrides: object):
    """The real ASGI app on a test's own store, artifact directory and queue (``overrides``: more Settings)."""
    from fastapi.testclient import TestClient

    from service.config import Settings, get_settings
    from service.main import create_app

    values: dict = dict(data_dir=tmp, database_url=f"sqlite:///{tmp / 'jobs.db'}", artifact_dir=tmp / "artifacts",
                        broker_url=REDIS_URL, toy_queue=queue, checkpoint_queue=queue)  # fmt: skip
    settings = Settings(**(values | overrides))
    app = create_app()
    app.dependency_overrides[get_settings] = lambda: settings
    return TestClient(app)


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


def python() -> str:
    return sys.executable
