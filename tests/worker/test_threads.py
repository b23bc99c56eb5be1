"""Issue 21 (G2): a worker runs torch with ``RVSM_TORCH_THREADS`` threads, else the cores it may use (its CPU
affinity), fixed per worker; a checkpoint job's training child gets as many."""

from __future__ import annotations

import os

import pytest
import torch

from jobs.settings import Settings
from worker.jobs import size_threads


@pytest.fixture(autouse=True)
def keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("threads,cores,want", [(None, 3, 3), (1, 3, 1), (3, None, 3)])
def test_the_setting_decides_else_the_cores(tmp_path, threads, cores, want):
    settings = Settings(data_dir=tmp_path, torch_threads=threads)
    assert size_threads(settings, cores=cores) == want
    assert torch.get_num_threads() == want
    assert settings.job_child().threads == want  # the training child runs with what the worker does


def test_unset_it_is_the_cpu_affinity(tmp_path):
    assert size_threads(Settings(data_dir=tmp_path)) == len(os.sched_getaffinity(0))
