"""A checkpoint job's inputs, checked and ready to train: the data set, the model, the weights to sparsify.

The same code serves the API's submit-time checks and the worker, so a job that was accepted does not
fail later on something that could have been seen at submit time. The model is a built-in
(:mod:`rvsm.models`, optionally with an uploaded state_dict) or the user's own, uploaded as a
``torch.export`` archive (:mod:`rvsm.exported`). What was normalised on the way (a state_dict unwrapped, key
prefixes stripped, a channel dimension added) is listed in :attr:`Prepared.normalised`.

:func:`check` is the submit-time half and allocates nothing that scales with the job: the data set's
size comes from the spec, a directory listing or file headers (:mod:`rvsm.datashape`), every cap of
:class:`CheckpointLimits` is checked on those numbers, and the model is built on the ``meta`` device, where
a forward pass computes shapes and counts activations without memory. Only then is an upload read in
full (NaN, labels), a read bounded by the byte cap. :func:`prepare` (the worker) runs :func:`check` first
and then builds the real thing.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from . import exported as rexported
from . import models, sandbox
from .archive import ArchiveLimits
from .checkpoints import StateDict, check_against, header_state, is_safetensors, read_state_dict, unwrap
from .data import EVAL_BATCH, MAX_CLASSES, InputInfo, TensorData, check_inputs, fit_inputs, load_dataset, output_width
from .datashape import DataShape, describe_dataset
from .errors import InputError
from .inputs import Signature, signature
from .sandbox import ChildLimits
from .train import TrainConfig

EXPORTED = "exported"


@dataclass(frozen=True, kw_only=True)
class CheckpointLimits:
    """Caps on everything that scales a checkpoint job's cost; ``None`` is no cap (the library's default;
    the service passes its settings). Each is checked before the thing it caps is allocated.

    - ``samples``: rows of the data set, train and validation together;
    - ``classes``: a classification set's classes (its declared count, or its largest label + 1);
    - ``features``: elements of one sample (``C x H x W``, or the flat feature count);
    - ``parameters``: the model's parameters (counted on the ``meta`` device);
    - ``activations``: the elements of every tensor one training batch's forward pass allocates (each
      operator's output; views and in-place results not counted), counted by a ``meta`` forward pass of
      the first batch (``min(batch_size, train samples)`` samples): what autograd may keep for backward;
    - ``traffic``: the elements every operator of one forward pass reads and writes (an exported graph's,
      counted under ``FakeTensorMode``: an ``expand`` then a sum counts at the expanded size);
    - ``flops``: the floating-point operations of one forward pass's matmul-like operators (exported graphs);
    - ``nodes``: the nodes of an exported graph;
    - ``epochs``: ``epochs + finetune_epochs``.

    Passes are counted at the largest batch the job runs: the training batch and the evaluation batch
    (``min(EVAL_BATCH, validation rows)``).
    """

    samples: int | None = None
    classes: int | None = None
    features: int | None = None
    parameters: int | None = None
    activations: int | None = None
    traffic: int | None = None
    flops: int | None = None
    nodes: int | None = None
    epochs: int | None = None


def _cap(name: str, what: str, value: int, cap: int | None) -> None:
    if cap is not None and value > cap:
        raise InputError(name, f"{what} is {value}, over the cap of {cap}")


@dataclass
class Plan:
    """What :func:`check` found: the data set's shape, the model (built-ins on ``meta``), its size."""

    shape: DataShape
    model: nn.Module
    architecture: str  # a built-in's name, or "exported"
    sparse_names: list[str]
    parameters: int
    activations: int
    data: TensorData | None = None  # an upload, read and checked
    state: StateDict | None = None  # the uploaded state_dict of a built-in, read and checked
    exported: rexported.Exported | None = None
    normalised: list[str] = field(default_factory=list)
    steps: int = 0  # optimizer steps the job will run (all epochs, fine-tuning included)


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
        raise InputError("params", f"{unmatched} match no parameter; the model has {names[:50]}")
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def _width(shape: DataShape) -> int:
    """The model's output width: the data's classes or targets (known once its labels were read)."""
    if shape.outputs is None:
        raise ValueError("the data set's outputs are unknown until its labels are read")
    return shape.outputs


def _check_outputs(out: tuple[int, ...], shape: DataShape, task: str, what: str) -> None:
    """The model's per-sample output against the labels: ``(T, C)`` for per-token class labels ``(T,)``, else
    at least the classes (classification) or exactly the targets (regression) in all."""
    if task == "classification" and shape.label_shape:
        if tuple(out[:-1]) != tuple(shape.label_shape) or out[-1] < _width(shape):
            raise InputError(
                "dataset",
                f"{what} gives outputs of shape {tuple(out)} per sample; per-token labels y "
                f"of shape {tuple(shape.label_shape)} with {shape.outputs} classes need "
                f"{(*shape.label_shape, shape.outputs)} or more classes (logits last)",
            )
        return
    width = output_width(out)
    if task == "classification" and width < _width(shape):
        raise InputError("dataset", f"{what} gives {width} outputs per sample, the data has {shape.outputs} classes")
    if task == "regression" and width != shape.outputs:
        raise InputError("dataset", f"{what} gives {width} outputs per sample, the data has {shape.outputs} targets")


def _input_shapes(shape: DataShape) -> dict[str, tuple[int, ...]]:
    return {k: i.shape for k, i in (shape.inputs or {}).items()}


def meta_forward(model: nn.Module, sample_shape: tuple[int, ...], batch: int) -> tuple[tuple[int, ...], int]:
    """One training-mode forward pass of ``batch`` samples with nothing computed (:func:`rvsm.exported.fake_cost`,
    the one allocation count for built-ins and uploads alike): the output's per-sample shape and the elements
    the pass allocates."""
    cost = rexported.fake_cost(model, sample_shape, batch)
    return cost.output_shape, cost.allocated


def _data_caps(spec: dict, shape: DataShape, task: str, limits: CheckpointLimits, max_bytes: int) -> None:
    synthetic = spec.get("name") == "synthetic"
    _cap(
        "dataset.samples" if synthetic else "dataset",
        "the data set's samples (train + validation)",
        shape.rows,
        limits.samples,
    )
    shown = f"shape {shape.sample_shape}" if shape.sample_shape else f"inputs {_input_shapes(shape)}"
    _cap("dataset", f"one sample's elements (features, {shown})", shape.features, limits.features)
    _cap("dataset", "the bytes of the uploaded arrays once read", shape.nbytes, max_bytes)
    if task == "classification" and shape.outputs is not None:
        _cap("dataset.num_classes" if synthetic else "dataset", "the number of classes", shape.outputs, limits.classes)


def _model_caps(
    model: nn.Module, sample_shape: tuple[int, ...], shape: DataShape, cfg: TrainConfig, limits: CheckpointLimits
) -> tuple[int, tuple[int, ...], int]:
    """Parameters (capped), then the output shape and the activations of the first batch (capped); the last
    batch too when it is smaller (a batch of one fails in batch norm)."""
    params = sum(p.numel() for p in model.parameters())
    _cap("architecture", "the model's parameters", params, limits.parameters)
    first = min(cfg.batch, shape.train_rows)
    out, elements = meta_forward(model, sample_shape, first)
    _cap("batch_size", f"the activations of one batch of {first} samples (elements)", elements, limits.activations)
    last = shape.train_rows % cfg.batch
    if 0 < last < first:
        try:
            meta_forward(model, sample_shape, last)
        except InputError as e:
            why = e.rule.split(": ", 1)[-1]
            raise InputError(
                "batch_size",
                f"each epoch ends with a batch of {last} (train samples {shape.train_rows} "
                f"% batch_size {cfg.batch}), on which the model fails ({why}); choose another "
                "batch_size",
            ) from None
    return params, out, elements


def _builtin(spec: dict, blob: bytes | None, shape: DataShape, cfg: TrainConfig, limits: CheckpointLimits) -> Plan:
    arch = spec["architecture"]
    if spec.get("hidden") is not None and arch != "mlp":
        raise InputError("hidden", f"sets the mlp's layer widths; architecture {arch!r} has none")
    if shape.inputs is not None and list(shape.inputs) != ["x"]:
        raise InputError(
            "dataset",
            f"architecture {arch!r} takes one input 'x'; the data has {list(shape.inputs)} "
            "(several inputs need an exported model that takes them)",
        )
    notes, sample_shape = [], shape.sample_shape
    if arch != "mlp" and len(sample_shape) == 2:
        sample_shape = (1, *sample_shape)
        notes.append(f"added a channel dimension to the data: samples of shape {sample_shape}")
    model = build(arch, sample_shape, _width(shape), hidden=spec.get("hidden"), device="meta")
    params, out, elements = _model_caps(model, sample_shape, shape, cfg, limits)
    _check_outputs(out, shape, cfg.task, f"architecture {arch!r}")
    state = None
    if blob is not None:
        if is_safetensors(blob):
            check_against(model, unwrap(header_state(blob)).tensors)  # keys, shapes, dtypes before any data
        state = read_state_dict(blob)
        check_against(model, state.tensors)
        notes += state.normalised
    names = models.default_sparse_parameters(model)
    return Plan(shape, model, arch, names, params, elements, state=state, normalised=notes)


def build(
    arch: str,
    sample_shape: tuple[int, ...],
    outputs: int,
    *,
    hidden: list[int] | None,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """Built-in ``arch`` for samples of ``sample_shape`` on ``device`` (``meta``: shapes only, no memory)."""
    try:
        with torch.device(device):
            return models.build_for(arch, sample_shape, outputs, hidden=hidden)
    except ValueError as e:
        raise InputError("architecture", f"cannot be built for this data set: {e}") from None


def _exported_caps(
    model: nn.Module, sample: Signature, shape: DataShape, cfg: TrainConfig, limits: CheckpointLimits
) -> tuple[int, tuple[int, ...], int]:
    """:func:`_model_caps` for an untrusted graph: every pass counted under ``FakeTensorMode``
    (:func:`rvsm.exported.fake_cost`), at the training batch, the evaluation batch and an epoch's last batch."""
    params = sum(p.numel() for p in model.parameters())
    _cap("architecture", "the model's parameters", params, limits.parameters)
    first, last = min(cfg.batch, shape.train_rows), shape.train_rows % cfg.batch
    evaluation = min(EVAL_BATCH, max(shape.rows - shape.train_rows, 1))
    passes = [("training", first, True), ("evaluation", evaluation, False)]
    cost = None
    for what, batch, training in passes if evaluation > first else passes[:1]:
        c = rexported.fake_cost(model, sample, batch, training=training)
        cost = cost or c
        rule = f"of one {what} batch of {batch} samples"
        _cap("batch_size", f"the activations {rule} (elements allocated)", c.allocated, limits.activations)
        _cap("batch_size", f"the memory traffic {rule} (elements read and written)", c.traffic, limits.traffic)
        _cap("batch_size", f"the floating-point operations {rule}", c.flops, limits.flops)
    if 0 < last < first:
        try:
            rexported.fake_cost(model, sample, last)
        except InputError as e:
            why = e.rule.split(": ", 1)[-1]
            raise InputError(
                "batch_size",
                f"each epoch ends with a batch of {last} (train samples {shape.train_rows} "
                f"% batch_size {cfg.batch}), on which the model fails ({why}); choose another "
                "batch_size",
            ) from None
    assert cost is not None
    return params, cost.output_shape, cost.allocated


def _exported(
    blob: bytes, shape: DataShape, spec: dict, cfg: TrainConfig, limits: CheckpointLimits, max_bytes: int
) -> Plan:
    if spec.get("architecture") not in (None, EXPORTED):
        raise InputError(
            "architecture",
            f"a .pt2 checkpoint carries its own architecture: leave architecture "
            f"out or set it to 'exported' (got {spec['architecture']!r})",
        )
    archive_limits = ArchiveLimits(bytes=max_bytes, member_bytes=max_bytes, nodes=limits.nodes or 2**31)
    exp = rexported.load(blob, limits=archive_limits)
    check_inputs(shape.inputs or {"x": InputInfo(shape.sample_shape, "float32", True)}, exp.inputs)
    params, _, elements = _exported_caps(exp.module, exp.inputs, shape, cfg, limits)
    _check_outputs(exp.output_shape, shape, cfg.task, "the exported model")
    names = rexported.sparsifiable_parameters(exp.module)
    return Plan(shape, exp.module, EXPORTED, names, params, elements, exported=exp)


def _read_upload(
    spec: dict,
    shape: DataShape,
    task: str,
    upload: Path | None,
    limits: CheckpointLimits,
) -> tuple[DataShape, TensorData | None]:
    """An uploaded data set, read in full once its header shapes passed the caps (NaN and labels need the
    data); classes are capped by the label check itself, before any model is built."""
    if spec.get("name") != "upload":
        return shape, None
    data = load_dataset(spec, task=task, upload=upload, max_classes=limits.classes or MAX_CLASSES)
    return replace(shape, outputs=data.num_outputs), data


def check(
    spec: dict,
    *,
    limits: CheckpointLimits = CheckpointLimits(),  # noqa: B008 - frozen
    checkpoint: bytes | None = None,
    dataset_file: Path | None = None,
    datasets_dir: Path | None = None,
    max_bytes: int = 2**31,
) -> Plan:
    """Every rule and cap of a checkpoint job ``spec``, before anything that scales with it is allocated
    (module docstring); ``InputError`` naming the field, the value and the cap."""
    cfg = TrainConfig.from_spec(spec)
    _cap("epochs", "epochs + finetune_epochs", cfg.total_epochs, limits.epochs)
    ds = spec.get("dataset", {})
    shape = describe_dataset(ds, task=cfg.task, upload=dataset_file, datasets_dir=datasets_dir)
    _data_caps(ds, shape, cfg.task, limits, max_bytes)
    shape, data = _read_upload(ds, shape, cfg.task, dataset_file, limits)
    cfg = cfg.resolved(shape.train_rows)
    arch = spec.get("architecture")
    if checkpoint is not None and rexported.is_pt2(checkpoint):
        plan = _exported(checkpoint, shape, spec, cfg, limits, max_bytes)
    elif arch in (None, EXPORTED):
        raise InputError(
            "architecture", "is required (one of the built-ins) unless the checkpoint is a torch.export .pt2 archive"
        )
    else:
        plan = _builtin(spec, checkpoint, shape, cfg, limits)
    plan.data = data
    if cfg.algorithm == "rvscgd" and not plan.architecture.endswith("_binary"):
        raise InputError("algorithm", "'rvscgd' trains a binarized architecture (lenet5_binary)")
    if spec.get("params") is not None:
        plan.sparse_names = select_parameters(plan.model, spec["params"])
    if not plan.sparse_names and cfg.algorithm != "sgd":
        raise InputError("params", "the model has no convolution or linear weights to sparsify; name them in params")
    plan.steps = cfg.steps_per_epoch(shape.train_rows) * cfg.total_epochs
    return plan


def prepare(
    spec: dict,
    *,
    limits: CheckpointLimits = CheckpointLimits(),  # noqa: B008 - frozen
    checkpoint: bytes | None = None,
    dataset_file: Path | None = None,
    datasets_dir: Path | None = None,
    max_bytes: int = 2**31,
) -> Prepared:
    """:func:`check`, then the real data set and model (the worker's half; see the module docstring)."""
    plan = check(
        spec,
        limits=limits,
        checkpoint=checkpoint,
        dataset_file=dataset_file,
        datasets_dir=datasets_dir,
        max_bytes=max_bytes,
    )
    task = TrainConfig.from_spec(spec).task
    data = plan.data or load_dataset(spec.get("dataset", {}), task=task, datasets_dir=datasets_dir)
    if plan.exported is not None:
        return Prepared(plan.model, fit_inputs(data, plan.exported.inputs), plan.sparse_names, EXPORTED, plan.exported)
    data = fit_inputs(data, signature(data.sample_shape))  # a built-in takes floats
    if plan.architecture != "mlp" and len(data.sample_shape) == 2:
        for name in ("x_train", "x_val"):
            setattr(data, name, getattr(data, name).unsqueeze(1))
    if math.prod(data.sample_shape) != plan.shape.features or data.num_outputs > (plan.shape.outputs or 0):
        raise InputError(
            "dataset", f"changed since it was checked: samples {data.sample_shape}, {data.num_outputs} outputs"
        )
    model = build(plan.architecture, data.sample_shape, _width(plan.shape), hidden=spec.get("hidden"))
    if plan.state is not None:
        model.load_state_dict(plan.state.tensors)
    return Prepared(model, data, plan.sparse_names, plan.architecture, normalised=plan.normalised)


def check_isolated(
    spec: dict,
    *,
    child: ChildLimits,
    limits: CheckpointLimits = CheckpointLimits(),  # noqa: B008 - frozen
    checkpoint: bytes | None = None,
    dataset_file: Path | None = None,
    datasets_dir: Path | None = None,
    max_bytes: int = 2**31,
) -> dict:
    """:func:`check` in a confined child process (:mod:`rvsm.sandbox`): the submit-time check of a service,
    which must never run an uploaded graph in its own process. Returns a summary (architecture, parameters,
    activations, the weights to sparsify); ``InputError`` as :func:`check`, and for a check that crashed,
    ran out of its memory or overran its time (``checkpoint`` named when a file was uploaded)."""
    try:
        out = sandbox.run(
            _check_in_child, spec, limits, checkpoint, dataset_file, datasets_dir, max_bytes, limits=child
        )
    except sandbox.ChildFailed as e:
        field = "checkpoint" if checkpoint is not None else "dataset" if dataset_file is not None else "architecture"
        raise InputError(field, f"the model could not be checked: {e}") from None
    return dict(out)


def _check_in_child(
    spec: dict,
    limits: CheckpointLimits,
    checkpoint: bytes | None,
    dataset_file: Path | None,
    datasets_dir: Path | None,
    max_bytes: int,
    *,
    send: object,
) -> dict:
    plan = check(
        spec,
        limits=limits,
        checkpoint=checkpoint,
        dataset_file=dataset_file,
        datasets_dir=datasets_dir,
        max_bytes=max_bytes,
    )
    return {
        "architecture": plan.architecture,
        "parameters": plan.parameters,
        "activations": plan.activations,
        "sparse_names": plan.sparse_names,
        "steps": plan.steps,
    }
