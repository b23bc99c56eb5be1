"""A job's directory, the one place that names its files, and atomic writes (temp file + rename).

::

    <artifact_dir>/<job id>/
        inputs/checkpoint.bin               the uploaded checkpoint (written by the API at submit)
        inputs/dataset.npz | .safetensors   the uploaded data set (idem)
        resume.pt                           a checkpoint job's resume state (the worker, each epoch)
        result.json | report.json           the result of a toy | checkpoint job (the worker, at the end)
        runs.safetensors, ...               the other artifacts, each recorded with its sha256
        convergence.png                     a toy job's plot (drawn by the API when first asked for)
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from .db import Artifact

MEDIA_TYPES = {
    ".json": "application/json",
    ".png": "image/png",
    ".safetensors": "application/octet-stream",
    ".sparse": "application/octet-stream",
}


PLOT = "convergence.png"
COLUMNS = "runs.safetensors"
RESUME = "resume.pt"
CHECKPOINT_INPUT = "checkpoint.bin"
DATASET_INPUTS = ("dataset.npz", "dataset.safetensors")
RESULTS = {"toy": "result.json", "checkpoint": "report.json"}
"""The result file of each job kind."""


def job_dir(root: Path, job_id: str) -> Path:
    return root / job_id


def inputs_dir(root: Path, job_id: str) -> Path:
    return job_dir(root, job_id) / "inputs"


def input_name(field: str, filename: str) -> str:
    """Where the upload of form field ``field`` (``checkpoint`` or ``dataset``), sent as ``filename``, is kept."""
    if field == "checkpoint":
        return CHECKPOINT_INPUT
    return DATASET_INPUTS[0] if filename.lower().endswith(".npz") else DATASET_INPUTS[1]


def checkpoint_input(root: Path, job_id: str) -> Path:
    return inputs_dir(root, job_id) / CHECKPOINT_INPUT


def dataset_input(root: Path, job_id: str) -> Path | None:
    """The job's uploaded data set, if it has one."""
    return next((p for p in (inputs_dir(root, job_id) / n for n in DATASET_INPUTS) if p.exists()), None)


def resume_path(root: Path, job_id: str) -> Path:
    return job_dir(root, job_id) / RESUME


def result_path(job_id: str, kind: str) -> str:
    """The job's result file, relative to the artifact directory (as the job row keeps it)."""
    return str(Path(job_id) / RESULTS[kind])


def write_atomic(path: Path, data: bytes) -> str:
    """Write ``data`` to ``path`` through a temp file in the same directory and a rename; returns sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def media_type(name: str) -> str:
    return MEDIA_TYPES.get(Path(name).suffix, "application/octet-stream")


def record(root: Path, job_id: str, name: str, data: bytes) -> Artifact:
    """Write ``data`` as artifact ``name`` of ``job_id`` (atomically); its row, not yet added to a session."""
    path = job_dir(root, job_id) / name
    digest = write_atomic(path, data)
    return Artifact(
        job_id=job_id,
        name=name,
        path=str(path.relative_to(root)),
        sha256=digest,
        size=len(data),
        media_type=media_type(name),
    )
