"""Fence 3: an untrusted graph runs only in a disposable child process, under limits.

:func:`run` calls ``target(*args, send=...)`` in a child forked from a :mod:`multiprocessing` fork server
(which has imported torch and this library once, so a child starts in milliseconds and holds no other job's
data: the server never runs a job). Before ``target`` runs, the child confines itself (:func:`confine`):

- ``RLIMIT_AS``: its address space may grow by ``memory_bytes`` at most (an allocation past it fails with
  ``MemoryError`` / a torch allocation error; not set where CUDA is used, which reserves address space);
- ``RLIMIT_CPU``: ``cpu_s`` seconds of CPU, then SIGKILL; ``RLIMIT_CORE`` 0 (no core dumps);
  ``RLIMIT_FSIZE``: no file it writes may grow past ``file_bytes``;
- the parent's death kills it (``PR_SET_PDEATHSIG``); ``PR_SET_NO_NEW_PRIVS``;
- a seccomp filter (:mod:`pyseccomp`, libseccomp): no ``execve``, no new sockets, no signals to other
  processes, no ``ptrace`` or ``process_vm_*`` (reading another process's memory), no opening a file for
  writing or creating, renaming, linking or removing one.

The child never writes files: what it produces comes back over a pipe as raw bytes and JSON, which the parent
parses as data only (``recv_bytes`` and ``json.loads``; nothing from the child is unpickled). The parent also
keeps a wall-clock limit. A child that dies (a signal, a limit) or overruns raises :class:`ChildFailed`; an
``InputError`` raised in the child is raised again in the parent with its field and rule.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import multiprocessing
import os
import resource
import signal
import sys
import tempfile
import threading
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from .errors import InputError

PRELOAD = [
    "torch",
    "torch.export",
    "torch._export.serde.serialize",
    "torch._subclasses.fake_tensor",
    "sympy",
    "torch.utils.flop_counter",
    "rvsm.exported",
    "rvsm.prepare",
    "rvsm.train",
    "rvsm._warm",
]  # and preload()
MAX_MESSAGE = 2**31
_lock = threading.Lock()
_ctx: Any = None


@dataclass(frozen=True, kw_only=True)
class ChildLimits:
    """Limits of one child (module docstring); ``None`` is no limit."""

    memory_bytes: int | None = 4 * 2**30
    cpu_s: int | None = 120
    wall_s: float | None = 120.0
    file_bytes: int = 0
    threads: int = 1
    seccomp: bool = True


class ChildFailed(RuntimeError):
    """The child died (a signal or a limit) or overran its wall-clock limit."""


def preload(*modules: str) -> None:
    """Have the fork server import ``modules`` too (before its first child; later calls change nothing)."""
    PRELOAD.extend(m for m in modules if m not in PRELOAD)


def _context() -> Any:
    global _ctx
    if _ctx is None:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)
        _ctx = ctx
    return _ctx


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _seccomp() -> None:
    import pyseccomp as sc

    f = sc.SyscallFilter(defaction=sc.ALLOW)
    deny = sc.ERRNO(errno.EPERM)
    for call in (
        "execve",
        "execveat",
        "ptrace",
        "process_vm_readv",
        "process_vm_writev",
        "socket",
        "socketpair",
        "connect",
        "bind",
        "listen",
        "kill",
        "tkill",
        "creat",
        "mknod",
        "mknodat",
        "link",
        "linkat",
        "symlink",
        "symlinkat",
        "unlink",
        "unlinkat",
        "rename",
        "renameat",
        "renameat2",
        "truncate",
        "chmod",
        "fchmodat",
        "chown",
        "fchownat",
        "mount",
        "setuid",
        "setgid",
    ):
        f.add_rule(deny, call)
    f.add_rule(deny, "tgkill", sc.Arg(0, sc.NE, os.getpid()))
    for flag in (os.O_WRONLY, os.O_RDWR, os.O_CREAT, os.O_TRUNC):
        f.add_rule(deny, "open", sc.Arg(1, sc.MASKED_EQ, flag, flag))
        f.add_rule(deny, "openat", sc.Arg(2, sc.MASKED_EQ, flag, flag))
    f.add_rule(sc.ERRNO(errno.ENOSYS), "openat2")  # its flags sit in a struct a filter cannot read: glibc falls back
    f.load()


def _vm_size() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def confine(limits: ChildLimits, *, cuda: bool = False) -> None:
    """Apply ``limits`` to this process (module docstring). Irreversible: only in a child."""
    tempfile.gettempdir()  # found by writing a probe file: cached now, while writing is still allowed
    libc = _libc()
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the cap fails (EFBIG) instead of killing
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_bytes, limits.file_bytes))
    if limits.cpu_s is not None:
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s))
    import torch

    torch.set_num_threads(max(1, limits.threads))
    if limits.memory_bytes is not None and not cuda:
        cap = _vm_size() + limits.memory_bytes
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    if limits.seccomp:
        _seccomp()


class Channel:
    """The child's end: JSON messages and raw byte blobs to the parent."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def message(self, kind: str, value: Any = None, blobs: dict[str, bytes] | None = None) -> None:
        """Send ``{"type": kind, "value": value}``, then each blob (names and sizes in the message)."""
        blobs = blobs or {}
        head = {"type": kind, "value": value, "blobs": [[k, len(b)] for k, b in blobs.items()]}
        self.conn.send_bytes(json.dumps(head, allow_nan=False).encode())
        for blob in blobs.values():
            self.conn.send_bytes(blob)


def _child(conn: Connection, target: Callable[..., Any], args: tuple, limits: ChildLimits, cuda: bool) -> None:
    out = Channel(conn)
    try:
        confine(limits, cuda=cuda)
        out.message("result", target(*args, send=out.message))
    except InputError as e:
        out.message("input_error", {"field": e.field, "rule": e.rule})
    except MemoryError:
        out.message("error", "ran out of its memory cap")
    except BaseException as e:  # noqa: BLE001 - whatever happened is the attempt's outcome
        out.message("error", f"{type(e).__name__}: {str(e)[:500]}")
    finally:
        conn.close()
        os._exit(0)


@contextlib.contextmanager
def _without_main() -> Iterator[None]:
    """Start a child without re-running the parent's ``__main__`` in it (multiprocessing would, for spawn and
    forkserver children): our targets live in importable modules, and a service's entry script is no business
    of a sandbox. ``sys.modules['__main__']`` is swapped for an empty module while the child is prepared."""
    real = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = real


def warm() -> None:
    """Start the fork server now (it imports torch once), so the first real child starts fast."""
    run(_noop, limits=ChildLimits(seccomp=False, memory_bytes=None))


def _noop(*, send: Callable[..., None]) -> None:
    return None


def run(
    target: Callable[..., Any],
    *args: Any,
    limits: ChildLimits,
    cuda: bool = False,
    on_message: Callable[[str, Any, dict[str, bytes]], None] | None = None,
) -> Any:
    """``target(*args, send=...)`` in a confined child; its JSON result. ``send(kind, value, blobs)`` in the
    child reaches ``on_message(kind, value, blobs)`` here (which may raise to stop the child)."""
    with _lock:
        ctx = _context()
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, target, args, limits, cuda), daemon=True)
    with _lock, _without_main():
        proc.start()
    child.close()
    try:
        return _receive(parent, proc, limits, on_message)
    finally:
        parent.close()
        if proc.is_alive():
            proc.kill()
        proc.join(5)


def _receive(
    conn: Connection, proc: Any, limits: ChildLimits, on_message: Callable[[str, Any, dict[str, bytes]], None] | None
) -> Any:
    deadline = time.monotonic() + limits.wall_s if limits.wall_s is not None else None
    while True:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            raise ChildFailed(f"took longer than its limit of {limits.wall_s:g} s")
        if not conn.poll(1.0 if left is None else min(left, 1.0)):
            continue
        try:
            head = json.loads(conn.recv_bytes(1 << 20))
            blobs = {str(name): conn.recv_bytes(MAX_MESSAGE) for name, _ in head.get("blobs", [])}
        except (EOFError, OSError, ValueError):
            proc.join(5)
            raise ChildFailed(_death(proc.exitcode)) from None
        kind, value = head.get("type"), head.get("value")
        if kind == "result":
            return value
        if kind == "input_error":
            raise InputError(str(value["field"]), str(value["rule"]))
        if kind == "error":
            raise ChildFailed(str(value))
        if on_message is not None:
            on_message(str(kind), value, blobs)


def _death(code: int | None) -> str:
    if code is not None and code < 0:
        name = signal.Signals(-code).name
        why = {"SIGKILL": " (killed)", "SIGXCPU": " (its CPU-time limit)", "SIGSEGV": " (a crash)"}.get(name, "")
        return f"its process died with {name}{why}"
    return f"its process ended without a result (exit code {code})"
