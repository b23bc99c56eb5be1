"""The embedded broker lives under the data directory and leaves nothing behind (issue 11)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import redis

from service.broker import SOCKET_PATH_MAX, EmbeddedBroker, _running


def _temp_entries() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).iterdir()}


def test_socket_dump_and_log_under_the_data_dir_and_nothing_left_after_stop(tmp_path):
    before = _temp_entries()
    data = tmp_path / "data"
    broker = EmbeddedBroker(data).start()
    try:
        assert broker.socket == data / "broker.sock" and broker.socket.is_socket()
        assert broker.url == f"redis+socket://{data / 'broker.sock'}"
        r = redis.Redis(unix_socket_path=str(broker.socket))
        r.rpush("q", b"message")
        assert r.llen("q") == 1
        r.close()
    finally:
        broker.stop()
    assert not broker.socket.exists() and not broker.answers()
    assert (data / "broker.rdb").exists()  # queued messages were saved with the data
    new = {n for n in _temp_entries() - before if n.startswith("tmp")}
    assert not new, new
    # a restart on the same data directory finds the saved message
    again = EmbeddedBroker(data).start()
    try:
        assert redis.Redis(unix_socket_path=str(again.socket)).llen("q") == 1
    finally:
        again.stop()


def test_a_data_dir_too_deep_for_a_socket_path_uses_a_short_private_folder_removed_on_stop(tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    assert len(str(deep / "broker.sock")) > SOCKET_PATH_MAX
    broker = EmbeddedBroker(deep).start()
    short = broker.short_dir
    try:
        assert short is not None and broker.socket.parent == short and broker.answers()
        assert (short.stat().st_mode & 0o777) == 0o700
        assert (deep / "broker.log").exists()
    finally:
        broker.stop()
    assert not short.exists()


def test_a_broker_left_by_a_killed_serve_is_stopped_before_a_new_one_starts(tmp_path):
    first = EmbeddedBroker(tmp_path).start()
    assert first.proc is not None
    orphan = first.proc.pid  # serve was SIGKILLed: nobody called stop()
    second = EmbeddedBroker(tmp_path).start()
    try:
        first.proc.wait(timeout=15)  # the orphan got SIGTERM from the new start
        assert second.answers() and second.proc is not None and second.proc.pid != orphan
        assert int((tmp_path / "broker.pid").read_text()) == second.proc.pid
    finally:
        second.stop()


def test_the_broker_dies_with_a_serve_that_is_sigkilled(tmp_path):
    """``kill -9`` of ``rvsm serve`` runs none of its cleanup: the broker must not outlive it."""
    import os
    import signal
    import subprocess
    import sys

    from tests.service_helpers import ROOT, wait_for

    code = (
        "import sys, time; from pathlib import Path; from service.broker import EmbeddedBroker; "
        "b = EmbeddedBroker(Path(sys.argv[1])).start(); print(b.proc.pid, flush=True); time.sleep(120)"
    )
    parent = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    broker_pid = int(parent.stdout.readline())
    assert os.path.exists(f"/proc/{broker_pid}")
    parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=10)

    wait_for(lambda: not _running(broker_pid), timeout=15, what="the orphaned broker to stop")
