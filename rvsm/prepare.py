"""A checkpoint job's inputs, checked and ready to train: the data set, the model, the weights to sparsify.

The same code serves the API's submit-time checks and the worker, so a job that was accepted does not
fail later on something that could have been seen at submit time. The model is a built-in
(:mod:`rvsm.models`, optionally with an uploaded state_dict) or the user's own, uploaded as a
``torch.export`` archive (:mod:`rvsm.exported`). What was normalised on the way (a state_dict unwrapped, key
prefixes stripped, a channel dimension added) is listed in :attr:`Prepared.normalised`.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from . import exported as rexported
from . import models
from .checkpoints import check_against, read_state_dict
from .data import TensorData, check_input_shape, load_dataset, output_width
from .errors import InputError

EXPORTED = "exported"


@dataclass
class Prepared:
    model: nn.Module
    data: TensorData
    sparse_names: list[str]  # the tensors RVSM sparsifies
    architecture: str  # a built-in's name, or "exported"
    exported: rexported.Exported | None = None
    normalised: list[str] = field(default_factory=list)


def select_parameters(model: nn.Module, patterns: list[str]) -> list[str]:
    """Parameter names matching ``patterns`` (exact names or ``fnmatch`` globs), in the model's order; a
    pattern that matches nothing is an ``InputError`` listing the names there are."""
    names = [n for n, _ in model.named_parameters()]
    unmatched = [p for p in patterns if not fnmatch.filter(names, p)]
    if unmatched:
        raise InputError("params", f"{unmatched} match no parameter; the model has {names}")
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def _check_outputs(width: int, data: TensorData, what: str) -> None:
    if data.task == "classification" and width < data.num_classes:
        raise InputError("dataset", f"{what} gives {width} outputs per sample, the data has {data.num_classes} classes")
    if data.task == "regression" and width != data.num_outputs:
        raise InputError("dataset", f"{what} gives {width} outputs per sample, the data has {data.num_outputs} targets")


def _exported(blob: bytes, data: TensorData, architecture: str | None, max_bytes: int) -> Prepared:
    if architecture not in (None, EXPORTED):
        raise InputError("architecture", f"a .pt2 checkpoint carries its own architecture: leave architecture "
                                         f"out or set it to 'exported' (got {architecture!r})")  # fmt: skip
    exp = rexported.load(blob, max_bytes=max_bytes)
    check_input_shape(data.sample_shape, exp.input_shape)
    _check_outputs(output_width(exp.output_shape), data, "the exported model")
    names = rexported.sparsifiable_parameters(exp.module)
    return Prepared(exp.module, data, names, EXPORTED, exp)


def _builtin(spec: dict, blob: bytes | None, data: TensorData) -> Prepared:
    arch = spec["architecture"]
    if spec.get("hidden") is not None and arch != "mlp":
        raise InputError("hidden", f"sets the mlp's layer widths; architecture {arch!r} has none")
    notes = []
    if arch != "mlp" and len(data.sample_shape) == 2:
        for name in ("x_train", "x_val"):
            setattr(data, name, getattr(data, name).unsqueeze(1))
        notes.append(f"added a channel dimension to the data: samples of shape {data.sample_shape}")
    try:
        model = models.build_for(arch, data.sample_shape, data.num_outputs, hidden=spec.get("hidden"))
    except ValueError as e:
        raise InputError("architecture", f"cannot be built for this data set: {e}") from None
    if blob is not None:
        sd = read_state_dict(blob)
        check_against(model, sd.tensors)
        model.load_state_dict(sd.tensors)
        notes += sd.normalised
    return Prepared(model, data, models.default_sparse_parameters(model), arch, normalised=notes)


def prepare(
    spec: dict,
    *,
    checkpoint: bytes | None = None,
    dataset_file: Path | None = None,
    datasets_dir: Path | None = None,
    max_bytes: int = 2**31,
) -> Prepared:
    """Load and check everything a checkpoint job ``spec`` needs (see the module docstring)."""
    task = spec.get("task", "classification")
    data = load_dataset(spec.get("dataset", {}), task=task, upload=dataset_file, datasets_dir=datasets_dir)
    arch = spec.get("architecture")
    if checkpoint is not None and rexported.is_pt2(checkpoint):
        prep = _exported(checkpoint, data, arch, max_bytes)
    elif arch in (None, EXPORTED):
        raise InputError("architecture", "is required (one of the built-ins) unless the checkpoint is a "
                                         "torch.export .pt2 archive")  # fmt: skip
    else:
        prep = _builtin(spec, checkpoint, data)
    if spec.get("algorithm") == "rvscgd" and not prep.architecture.endswith("_binary"):
        raise InputError("algorithm", "'rvscgd' trains a binarized architecture (lenet5_binary)")
    if spec.get("params") is not None:
        prep.sparse_names = select_parameters(prep.model, spec["params"])
    if not prep.sparse_names and spec.get("algorithm", "rvsm") != "sgd":
        raise InputError("params", "the model has no convolution or linear weights to sparsify; name them in params")
    return prep
