"""A checkpoint job: load the data and (optionally) the uploaded checkpoint, train sparse with
:func:`rvsm.train.train`, and produce ``model.safetensors``, ``model.sparse`` and ``report.json``.

After every epoch the resumable training state is written atomically to ``<job dir>/resume.pt``; a
worker that picks the job up again (the previous one died) continues from it instead of starting over.
"""

from __future__ import annotations

import dataclasses
import io
import json
import time
from pathlib import Path
from typing import Protocol

import torch
from safetensors.torch import save as safetensors_save

from rvsm import sparse_io
from rvsm.algorithms import default_device
from rvsm.train import TrainConfig, train
from service.artifacts import job_dir, write_atomic
from service.checkpoints import build_model, check_against, load_dataset, read_checkpoint
from service.config import Settings

RESUME = "resume.pt"
TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


class Progress(Protocol):
    def report(
        self, point: dict | None, *, progress: float, iteration: int, max_iters: int, eta_s: float | None,
        force: bool = False,
    ) -> None: ...  # fmt: skip

    def check(self) -> None: ...


def resume_path(settings: Settings, job_id: str) -> Path:
    return job_dir(settings.resolved_artifact_dir, job_id) / RESUME


def run_checkpoint_job(job_id: str, spec: dict, settings: Settings, progress: Progress) -> tuple[dict, dict]:
    """Train the job; returns its artifact files (name -> bytes) and a summary for the job row."""
    root = job_dir(settings.resolved_artifact_dir, job_id)
    inputs = root / "inputs"
    upload = next(iter(sorted(inputs.glob("dataset.*"))), None) if spec.get("has_dataset_file") else None
    data = load_dataset(spec.get("dataset", {}), upload=upload, settings=settings)
    torch.manual_seed(spec.get("seed", 0))
    model = build_model(spec, data)
    if spec.get("has_checkpoint"):
        state = read_checkpoint((inputs / "checkpoint.bin").read_bytes())
        check_against(model, state)
        model.load_state_dict(state)
    cfg = TrainConfig(**{k: v for k, v in spec.items() if k in TRAIN_FIELDS})
    device = torch.device(settings.device) if settings.device else default_device()

    rpath = resume_path(settings, job_id)
    resume = torch.load(rpath, map_location=device, weights_only=True) if rpath.exists() else None
    t_start = time.monotonic()
    first_epoch = resume["epoch"] if resume else 0

    def on_epoch(ev: dict) -> None:
        buf = io.BytesIO()
        torch.save(ev["state"], buf)
        write_atomic(rpath, buf.getvalue())
        done = ev["epoch"] - first_epoch
        per_epoch = (time.monotonic() - t_start) / max(done, 1)
        point = {k: v for k, v in ev.items() if k not in ("state", "epochs")}
        progress.report(
            point | {"iter": ev["epoch"]},
            progress=ev["epoch"] / ev["epochs"],
            iteration=ev["epoch"],
            max_iters=ev["epochs"],
            eta_s=per_epoch * (ev["epochs"] - ev["epoch"]),
            force=True,
        )

    result = train(
        model, data, cfg, device=device, callback=on_epoch, step_callback=lambda _s: progress.check(), resume=resume
    )
    state = {k: v.detach().cpu().contiguous() for k, v in result.model.state_dict().items()}
    dense = safetensors_save(state)
    sparse = sparse_io.dumps(state)
    report = {
        "architecture": spec["architecture"],
        "dataset": spec.get("dataset", {}) | {
            "in_channels": data.in_channels, "input_size": data.input_size, "num_classes": data.num_classes,
            "train_samples": int(data.x_train.shape[0]), "val_samples": int(data.x_val.shape[0]),
        },
        "algorithm": cfg.algorithm,
        "from_checkpoint": bool(spec.get("has_checkpoint")),
        "accuracy_before": result.accuracy_before,
        "accuracy_after": result.accuracy_after,
        "accuracy_dense": result.accuracy_dense,
        "accuracy_drop": result.accuracy_before - result.accuracy_after,
        "collapsed": result.collapsed,
        "sparsity": result.sparsity,
        "sizes": {
            "dense_safetensors_bytes": len(dense),
            "sparse_bytes": len(sparse),
            "information_limit_bytes": sparse_io.information_limit_bytes(state),
        },
        "trace": result.trace,
        "epochs": cfg.total_epochs,
        "resumed_from_epoch": result.resumed_from_epoch,
        "device": str(device),
        "wall_time_s": result.wall_time_s,
        "config": result.config,
    }  # fmt: skip
    summary = {
        "accuracy_before": result.accuracy_before,
        "accuracy_after": result.accuracy_after,
        "accuracy_drop": result.accuracy_before - result.accuracy_after,
        "sparsity": result.sparsity["prunable"],
        "sparsity_overall": result.sparsity["overall"],
        "collapsed": result.collapsed,
        "resumed_from_epoch": result.resumed_from_epoch,
    }
    files = {
        "model.safetensors": dense,
        "model.sparse": sparse,
        "report.json": json.dumps(report, allow_nan=False, indent=1).encode(),
    }
    return files, summary
