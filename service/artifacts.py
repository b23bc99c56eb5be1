"""Artifact files: atomic writes (temp file + rename) with their sha256, and the convergence plot."""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from pathlib import Path

MEDIA_TYPES = {
    ".json": "application/json",
    ".png": "image/png",
    ".safetensors": "application/octet-stream",
    ".sparse": "application/octet-stream",
}


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


def convergence_png(result: dict, *, max_runs: int = 12) -> bytes:
    """L_beta and theta(w^t, w*) against t for a toy result (a sweep: its first ``max_runs`` runs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = result["runs"][:max_runs] if "runs" in result else [result]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for i, r in enumerate(runs):
        tr = r["trace"]
        label = ", ".join(f"{k}={v}" for k, v in r.get("config", {}).items()) or None
        axes[0].plot(tr["iter"], tr["lagrangian"], label=label)
        pts = [(t, th) for t, th in zip(tr["iter"], tr["theta_w"], strict=True) if th is not None and th > 0]
        if pts:
            axes[1].semilogy(*zip(*pts, strict=True), label=label if i < max_runs else None)
    axes[0].set(xlabel="iteration", ylabel="L_β(u, w)", title="Lagrangian")
    axes[1].set(xlabel="iteration", ylabel="θ(w, w*)", title="angle to the teacher")
    for ax in axes:
        ax.grid(alpha=0.3)
    if len(runs) > 1:
        axes[1].legend(fontsize=6)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()
