"""Fence 3 in the worker: each checkpoint job trains in a confined child process of its own.

A job's data never reaches another job: job A trains on data holding a known byte signature; then jobs that try
the read paths the loader refuses (out-of-bounds views, uninitialised memory) are put straight into the store and
the queue, past the API's check, so that the worker's own child must refuse them; and a valid job that allocates
and returns fresh tensors succeeds. The signature appears in no artifact of theirs. A child that crashes
(SIGSEGV) fails its own attempt with a clear error; the worker lives on and runs the next job.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from benchmarks.user_models import export
from jobs import states
from jobs.db import get_sessionmaker
from jobs.layout import job_dir, write_atomic
from jobs.queue import enqueue
from jobs.settings import get_settings
from tests import service_helpers as helpers
from tests.service_helpers import wait_done
from worker.checkpoint_jobs import CHILD_POISON_ENV

SIGNATURE = np.array(
    [1.2345678, -0.87654321, 3.1415927, 2.7182817, 0.5772157, 1.4142135, -1.6021766, 0.4242424], dtype=np.float32
)
SPEC = {
    "kind": "checkpoint",
    "dataset": {"name": "upload"},
    "algorithm": "rvsm",
    "target_sparsity": 0.5,
    "epochs": 1,
    "batch_size": 16,
}


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class Probe(nn.Module):
    """A valid model that allocates fresh tensors in its forward and returns them mixed into its output."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scratch = torch.zeros(x.shape[0], 4096, dtype=x.dtype).sum(1, keepdim=True)
        return self.fc(x) + scratch


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("child")
    poison = tmp / "poison.txt"
    poison.write_text("")
    with helpers.api_and_worker(tmp, "child", env={CHILD_POISON_ENV: str(poison)}, max_upload_bytes=4_000_000) as s:
        yield s.client, s.worker, poison


def npz(x: np.ndarray, y: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, x=x, y=y, x_val=x[:32], y_val=y[:32])
    return buf.getvalue()


def secret_data(n: int = 128) -> bytes:
    x = np.random.default_rng(1).standard_normal((n, 8)).astype(np.float32)
    x[::7] = SIGNATURE  # the signature in a row of every batch, train and validation
    return npz(x, np.arange(n) % 3)


def plain_data(n: int = 128) -> bytes:
    return npz(np.random.default_rng(0).standard_normal((n, 8)).astype(np.float32), np.arange(n) % 3)


def put_job(client, spec: dict, checkpoint: bytes, dataset: bytes, poison: Path | None = None) -> str:
    """A queued job written straight into the store and the queue, past the API's checks."""
    settings = client.app.dependency_overrides[get_settings]()
    with get_sessionmaker(settings.resolved_database_url)() as s:
        job = states.new_job(
            s,
            kind="checkpoint",
            spec=spec | {"has_checkpoint": True, "has_dataset_file": True},
            owner=None,
            queue=settings.checkpoint_queue,
            max_iters=1,
            dispatch_s=60,
        )
        job_id = job.id
    inputs = job_dir(settings.resolved_artifact_dir, job_id) / "inputs"
    write_atomic(inputs / "checkpoint.bin", checkpoint)
    write_atomic(inputs / "dataset.npz", dataset)
    if poison is not None:
        poison.write_text(job_id)
    enqueue(settings, job_id, settings.checkpoint_queue)
    return job_id


def all_artifacts(client, job_id: str) -> bytes:
    return b"".join(helpers.artifacts(client, job_id).values())


def read_paths() -> dict[str, bytes]:
    """Archives that try to read memory that is not theirs (built by tests.crafted_pt2)."""
    crafted = pytest.importorskip("tests.crafted_pt2")
    return {"reshape_alias": crafted.oob_view_read(), "empty": crafted.empty_uninit(1 << 20)}


def test_a_job_never_sees_another_jobs_data(stack):
    client, worker, _ = stack
    torch.manual_seed(0)
    owner = put_job(client, SPEC, export(Small(), torch.randn(4, 8)), secret_data())
    assert wait_done(client, owner)["state"] == "succeeded", worker.output()[-3000:]

    probes = {name: put_job(client, SPEC, blob, plain_data()) for name, blob in read_paths().items()}
    probes["fresh tensors"] = put_job(client, SPEC, export(Probe(), torch.randn(4, 8)), plain_data())
    signature = SIGNATURE.tobytes()
    for name, job_id in probes.items():
        job = wait_done(client, job_id)
        if name == "fresh tensors":
            assert job["state"] == "succeeded", (job["error"], worker.output()[-3000:])
        else:  # the worker's own child refuses what the API would have refused
            assert job["state"] == "failed" and "refused" in job["error"], (name, job)
        assert signature not in all_artifacts(client, job_id), name


def test_a_crashing_child_fails_its_own_attempt_only(stack):
    client, worker, poison = stack
    torch.manual_seed(0)
    pt2 = export(Small(), torch.randn(4, 8))
    crashed = put_job(client, SPEC, pt2, plain_data(), poison=poison)
    job = wait_done(client, crashed)
    assert job["state"] == "failed" and "SIGSEGV" in job["error"], job
    assert worker.proc.poll() is None, "the worker died with its child"
    poison.write_text("")
    after = put_job(client, SPEC, pt2, plain_data())
    assert wait_done(client, after)["state"] == "succeeded", worker.output()[-3000:]
    report = json.loads(client.get(f"/v1/jobs/{after}/result").content)
    assert report["architecture"] == "exported"
