"""Embedded mode (``rvsm serve`` with no broker configured): one lock per data directory, and a
supervisor that keeps the worker process alive.

The supervisor runs the worker's command line as a child process (it imports nothing from the
worker) and starts a new one when it exits unexpectedly; ``/readyz`` reports a dead worker through
:func:`current`. Stopping sends SIGTERM (the worker hands its running job back to the queue at its
next progress check) and SIGKILL after a grace period.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import subprocess
import threading
from pathlib import Path
from typing import IO

log = logging.getLogger("rvsm.supervisor")
_current: Supervisor | None = None


class DataDirBusy(RuntimeError):
    """Another ``rvsm serve`` holds this data directory."""


def lock_data_dir(data_dir: Path) -> IO[str]:
    """An exclusive lock on ``data_dir`` for this process's lifetime (keep the returned file open)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    f = open(data_dir / "serve.lock", "a+")  # noqa: SIM115
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise DataDirBusy(
            f"another `rvsm serve` ({holder}) is already using the data directory {data_dir.resolve()}; "
            "stop it first, or give this one its own RVSM_DATA_DIR"
        ) from None
    f.truncate(0)
    f.write(f"pid {os.getpid()}")
    f.flush()
    return f


class Supervisor:
    """Keeps one worker process running: restarts it ``restart_delay_s`` after it dies."""

    def __init__(self, argv: list[str], env: dict[str, str], restart_delay_s: float = 1.0) -> None:
        self.argv, self.env, self.restart_delay_s = argv, env, restart_delay_s
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self.last_exit: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="rvsm-supervisor", daemon=True)

    def start(self) -> Supervisor:
        global _current
        self._spawn()
        self._thread.start()
        _current = self
        return self

    def _spawn(self) -> None:
        self.proc = subprocess.Popen(self.argv, env=self.env, start_new_session=True)

    def _watch(self) -> None:
        while not self._stop.wait(0.2):
            rc = self.proc.poll() if self.proc else None
            if rc is None:
                continue
            self.last_exit = rc
            log.warning("embedded worker exited with %s; restarting in %.1fs", rc, self.restart_delay_s)
            if self._stop.wait(self.restart_delay_s):
                return
            self.restarts += 1
            self._spawn()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def health(self) -> str:
        if self.alive():
            return "ok"
        return f"error: the worker exited with {self.proc.poll() if self.proc else None}; restarting"

    def stop(self, grace_s: float = 10.0) -> None:
        global _current
        self._stop.set()
        self._thread.join(timeout=2)
        _current = None
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


def current() -> Supervisor | None:
    """The supervisor of this process's embedded worker, if ``rvsm serve`` started one."""
    return _current
