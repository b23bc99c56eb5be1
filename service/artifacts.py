"""Artifact files: atomic writes (temp file + rename) with their sha256, and the lazy convergence plot.

A toy job's ``convergence.png`` is not drawn by the worker (matplotlib took most of a small job's time):
the API draws it the first time anyone lists the job's artifacts or asks for the plot
(:func:`artifacts_with_plot`), writes it atomically next to the result and records it as an artifact
like any other, with the sha256 and size of the file written. From then on it is served from the file.
Two first requests at once both draw the same picture; one row is kept.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .db import Artifact, Job

MEDIA_TYPES = {
    ".json": "application/json",
    ".png": "image/png",
    ".safetensors": "application/octet-stream",
    ".sparse": "application/octet-stream",
}


log = logging.getLogger("rvsm.api")
PLOT = "convergence.png"
COLUMNS = "runs.safetensors"


def job_dir(root: Path, job_id: str) -> Path:
    return root / job_id


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
    return Artifact(job_id=job_id, name=name, path=str(path.relative_to(root)), sha256=digest, size=len(data),
                    media_type=media_type(name))  # fmt: skip


def artifacts_with_plot(session: Session, root: Path, job: Job, rows: list[Artifact]) -> list[Artifact]:
    """``rows`` (the job's artifacts), with ``convergence.png`` drawn and recorded first if the job is a
    succeeded toy job without one."""
    if job.kind != "toy" or job.state != "succeeded" or not job.result_path or any(a.name == PLOT for a in rows):
        return rows
    try:
        art = record(root, job.id, PLOT, draw_plot(root, job))
    except (OSError, ValueError) as e:  # its files are gone (deleted meanwhile) or unreadable: list what is there
        log.warning("job %s: no %s: %s: %s", job.id, PLOT, type(e).__name__, e)
        return rows
    session.add(art)
    try:
        session.commit()
    except IntegrityError:  # drawn by another request at the same time, or the job was deleted meanwhile
        session.rollback()
        drawn = session.get(Artifact, (job.id, PLOT))
        if drawn is None:
            return rows
        art = drawn
    return sorted([*rows, art], key=lambda a: a.name)


def draw_plot(root: Path, job: Job) -> bytes:
    """The plot of a finished toy job, from its ``result.json`` (and a sweep's ``runs.safetensors``)."""
    from .plots import convergence_png

    if not job.result_path:
        raise ValueError(f"job {job.id} has no result")
    result = json.loads((root / job.result_path).read_bytes())
    columns = None
    if "runs" in result and (job_dir(root, job.id) / COLUMNS).exists():  # a sweep stored before columns: traces
        from safetensors import safe_open

        with safe_open(job_dir(root, job.id) / COLUMNS, framework="np") as f:
            columns = {k: f.get_tensor(k) for k in f.keys() if k.startswith("trace.")}  # noqa: SIM118
    return convergence_png(result, columns)
