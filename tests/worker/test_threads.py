"""Issue 21 (G2): a worker sizes torch's threads to the cores it may use, shared among the workers alive on its
host (their heartbeats in the job store), unless ``RVSM_TORCH_THREADS`` says; a checkpoint job's training child
gets as many."""

from __future__ import annotations

import datetime as dt

import pytest
import torch

from jobs import counters
from jobs.db import WorkerBeat, get_sessionmaker
from jobs.settings import Settings
from worker.jobs import size_threads


@pytest.fixture
def session(tmp_path):
    before = torch.get_num_threads()
    with get_sessionmaker(f"sqlite:///{tmp_path / 'jobs.db'}")() as s:
        for name in ("h:1", "h:2", "h:3", "other:1", "hh:1"):
            counters.heartbeat(s, name=name, queues=["cpu"], interval_s=1.0, pid=1)
        stale = s.get(WorkerBeat, "h:3")
        stale.seen_at -= dt.timedelta(seconds=10)  # silent for ten intervals: not alive
        s.commit()
        yield s
    torch.set_num_threads(before)


@pytest.mark.parametrize(
    "host,cores,threads,want",
    [
        ("h", 4, None, 2),  # two live workers on h (h:3 is stale; other:1 and hh:1 are other hosts)
        ("h", 2, None, 1),
        ("h", 1, None, 1),
        ("other", 2, None, 2),
        ("nobody", 3, None, 3),  # no heartbeat yet (the first job after start): all the cores
        ("h", 4, 3, 3),  # RVSM_TORCH_THREADS decides
    ],
)
def test_threads_are_the_cores_shared_among_the_host_s_workers(session, tmp_path, host, cores, threads, want):
    settings = Settings(data_dir=tmp_path, torch_threads=threads)
    assert size_threads(settings, session, host=host, cores=cores) == want
    assert torch.get_num_threads() == want
    assert settings.job_child().threads == want  # the training child runs with what the worker does
