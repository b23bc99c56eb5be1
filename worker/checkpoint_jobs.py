"""A checkpoint job: prepare its inputs with :func:`rvsm.prepare.prepare` (the data set, a built-in model with
optional uploaded weights, or the user's exported ``.pt2``), train sparse with :func:`rvsm.train.train`, and
produce ``model.safetensors`` (keyed by the model's own parameter names), ``model.sparse``, ``model.pt2`` for an
exported model, and ``report.json``.

After every epoch the resumable training state is written atomically to ``<job dir>/resume.pt``; a
worker that picks the job up again (the previous one died) continues from it instead of starting over.
"""

from __future__ import annotations

import ctypes
import io
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors.torch import save as safetensors_save

from jobs.layout import RESULTS, RESUME, checkpoint_input, dataset_input, resume_path, write_atomic
from jobs.settings import Settings
from rvsm import exported, sandbox, sparse_io
from rvsm.algorithms import default_device
from rvsm.inputs import rows
from rvsm.prepare import Prepared, prepare
from rvsm.train import TrainConfig, TrainResult, train

sandbox.preload(__name__)  # the fork server imports this module once; each training child starts with it
CHILD_POISON_ENV = "RVSM_TEST_CHILD_SEGV"


class Progress(Protocol):
    def report(
        self,
        point: dict | None,
        *,
        progress: float,
        iteration: int,
        max_iters: int,
        eta_s: float | None,
        force: bool = False,
    ) -> None: ...

    def check(self) -> None: ...


def run_checkpoint_job(job_id: str, spec: dict, settings: Settings, progress: Progress) -> tuple[dict, dict]:
    """Train the job in a confined child process of its own (:mod:`rvsm.sandbox`: the uploaded graph never runs
    in the worker, and the child holds this job's data only); returns its artifact files (name -> bytes) and a
    summary for the job row. The child sends progress, resume state and files; this process writes them."""
    rpath = resume_path(settings.resolved_artifact_dir, job_id)
    files: dict[str, bytes] = {}

    def on_message(kind: str, value: Any, blobs: dict[str, bytes]) -> None:
        if kind == "resume":
            write_atomic(rpath, blobs[RESUME])
        elif kind == "files":
            files.update(blobs)
        elif kind == "progress" and isinstance(value, dict):
            progress.report(
                value.get("point"),
                progress=float(value["progress"]),
                iteration=int(value["iteration"]),
                max_iters=int(value["max_iters"]),
                eta_s=value.get("eta_s"),
                force=bool(value.get("force")),
            )

    device = torch.device(settings.device) if settings.device else default_device()
    try:
        summary = sandbox.run(
            _train,
            job_id,
            spec,
            settings,
            limits=settings.job_child(),
            cuda=device.type == "cuda",
            on_message=on_message,
        )
    except sandbox.ChildFailed as e:
        raise TrainingFailed(f"the training process failed: {e}") from None
    return files, dict(summary)


class TrainingFailed(RuntimeError):
    """The job's training child crashed, ran out of its limits or raised: this attempt fails, nothing else."""


def _train(job_id: str, spec: dict, settings: Settings, *, send: Callable[..., None]) -> dict:
    """The child's half of :func:`run_checkpoint_job`: prepare, train, write nothing, send everything."""
    _child_poison_check(job_id)
    root = settings.resolved_artifact_dir
    upload = dataset_input(root, job_id) if spec.get("has_dataset_file") else None
    blob = checkpoint_input(root, job_id).read_bytes() if spec.get("has_checkpoint") else None
    torch.manual_seed(TrainConfig.from_spec(spec).seed)
    prep = prepare(
        spec,
        limits=settings.checkpoint_limits(),
        checkpoint=blob,
        dataset_file=upload,
        datasets_dir=settings.datasets_dir,
        max_bytes=settings.max_upload_bytes,
    )
    cfg = TrainConfig.from_spec(spec | {"params": prep.sparse_names})
    device = torch.device(settings.device) if settings.device else default_device()

    rpath = resume_path(settings.resolved_artifact_dir, job_id)
    resume = torch.load(rpath, map_location=device, weights_only=True) if rpath.exists() else None
    t_start = time.monotonic()
    first_epoch = resume["epoch"] if resume else 0
    pos: dict[str, Any] = {"step": 0, "steps": 0, "eta_s": None}  # optimizer steps: done, in all, time left

    def on_step(step: int, per_epoch: int) -> None:
        """Progress within an epoch (``iteration`` / ``max_iters`` count optimizer steps)."""
        steps = per_epoch * cfg.total_epochs
        done = step - first_epoch * per_epoch
        pos.update(step=step, steps=steps, eta_s=(time.monotonic() - t_start) / max(done, 1) * (steps - step))
        send(
            "progress",
            {"point": None, "progress": step / steps, "iteration": step, "max_iters": steps, "eta_s": pos["eta_s"]},
        )

    def on_epoch(ev: dict) -> None:
        buf = io.BytesIO()
        torch.save(ev["state"], buf)
        send("resume", None, {RESUME: buf.getvalue()})
        point = {k: v for k, v in ev.items() if k not in ("state", "epochs")}
        send(
            "progress",
            {
                "point": point | {"iter": ev["epoch"]},
                "progress": ev["epoch"] / ev["epochs"],
                "iteration": pos["step"],
                "max_iters": pos["steps"],
                "eta_s": pos["eta_s"],
                "force": True,
            },
        )

    result = train(prep.model, prep.data, cfg, device=device, callback=on_epoch, step_callback=on_step, resume=resume)
    files, summary = _outputs(spec, prep, cfg, result, device)
    send("files", None, files)
    return summary


def _child_poison_check(job_id: str) -> None:
    """Test-only (``CHILD_POISON_ENV``: a file listing job ids): crash the training child with SIGSEGV, as a
    bug in native code would, to show that only this attempt fails."""
    path = os.environ.get(CHILD_POISON_ENV)
    if path and job_id in Path(path).read_text().split():
        ctypes.string_at(0)


def _separate(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU copies, one per name: a tied weight (one tensor under two names) is written under each of its names
    (safetensors refuses tensors that share memory), so the file loads strictly into the user's own module."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for k, v in state.items():
        t = v.detach().cpu().contiguous()
        out[k] = t.clone() if t.data_ptr() in seen else t
        seen.add(t.data_ptr())
    return out


def _scores(result: TrainResult) -> dict:
    """Scores before / after / before the final thresholding: accuracy, or the validation MSE as ``loss``."""
    b, a, d = result.score_before, result.score_after, result.score_dense
    if result.metric == "accuracy":
        return {"accuracy_before": b, "accuracy_after": a, "accuracy_dense": d, "accuracy_drop": b - a}
    return {"loss_before": b, "loss_after": a, "loss_dense": d, "loss_increase": a - b}


def _outputs(
    spec: dict, prep: Prepared, cfg: TrainConfig, result: TrainResult, device: torch.device
) -> tuple[dict, dict]:
    state = _separate(result.model.state_dict())
    files = {"model.safetensors": safetensors_save(state), "model.sparse": sparse_io.dumps(state)}
    if prep.exported is not None:
        files["model.pt2"] = exported.save(prep.exported, state)
    data = prep.data
    shapes = data.input_shapes
    report = {
        "architecture": prep.architecture,
        "task": cfg.task,
        "metric": result.metric,
        "dataset": spec.get("dataset", {})
        | {
            "sample_shape": list(shapes["x"]) if list(shapes) == ["x"] else None,
            "outputs": data.num_outputs,
            "inputs": {k: list(v) for k, v in shapes.items()},
            "label_shape": list(data.y_val.shape[1:]),
            "train_samples": rows(data.x_train),
            "val_samples": rows(data.x_val),
        }
        | ({"num_classes": data.num_classes} if cfg.task == "classification" else {}),
        "algorithm": cfg.algorithm,
        "target_sparsity": cfg.target,
        "sparsity_scope": cfg.sparsity_scope if cfg.target is not None else None,
        "from_checkpoint": bool(spec.get("has_checkpoint")),
        "normalised": prep.normalised,
        **_scores(result),
        "collapsed": result.collapsed,
        "warnings": result.warnings,
        "sparsity": result.sparsity,
        "sizes": {
            "dense_safetensors_bytes": len(files["model.safetensors"]),
            "sparse_bytes": len(files["model.sparse"]),
            "information_limit_bytes": sparse_io.information_limit_bytes(state),
        },
        "trace": result.trace,
        "epochs": cfg.total_epochs,
        "resumed_from_epoch": result.resumed_from_epoch,
        "device": str(device),
        "wall_time_s": result.wall_time_s,
        "config": result.config,
    }
    summary = _scores(result) | {
        "sparsity": result.sparsity["prunable"],
        "sparsity_overall": result.sparsity["overall"],
        "collapsed": result.collapsed,
        "resumed_from_epoch": result.resumed_from_epoch,
    }
    files[RESULTS["checkpoint"]] = json.dumps(report, allow_nan=False, indent=1).encode()
    return files, summary
