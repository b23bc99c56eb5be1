"""Data sets for checkpoint jobs, as in-memory tensors.

- :func:`digits`: scikit-learn's bundled handwritten digits (real data, 1,797 8x8 images, 10 classes).
- :func:`load_tensor_file`: a user's ``.safetensors`` or ``.npz`` with ``x``, ``y`` and optional ``x_val``,
  ``y_val``; ``x`` of any per-sample shape (images, flat features), or several inputs keyed by the model's
  input names (``x.input_ids``, ``x.attention_mask``, ``x_val.input_ids``, ...); ``y`` class labels per
  sample ``(N,)`` or per token ``(N, T)`` (entries equal to ``ignore_index`` count nowhere), or float
  targets (regression). Integer inputs stay integers (token ids); :func:`fit_inputs` casts each input to the
  dtype its model takes.
- :func:`image_folder`: a server-side directory ``root/<class name>/<image files>`` (ImageFolder layout;
  classes sorted by name; images resized to ``input_size`` square; grayscale or RGB).
- :func:`synthetic`: a teacher-student set (a random teacher network labels Gaussian inputs), for tests.
- :func:`load_dataset`: a checkpoint job's ``dataset`` spec to one of the above, errors naming the field.

scikit-learn, NumPy and Pillow are imported only by the loaders that need them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple, TypeVar

import torch
from torch import Tensor, nn

from .errors import InputError
from .inputs import Inputs, Signature, call, named, rows, sample_shapes, select, to

T = TypeVar("T")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}
TASKS = ("classification", "regression")
MAX_CLASSES = 10_000
IGNORE_INDEX = -100  # torch's cross_entropy default: a label that counts in neither loss nor accuracy
INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


@dataclass
class TensorData:
    """Train and validation sets: ``x`` is ``(N, *sample_shape)`` (float32, or integers until :func:`fit_inputs`)
    or a dict of such inputs by name; ``y`` is ``(N,)`` or per-token ``(N, T)`` int64 class labels
    (classification; ``ignore_index`` marks labels that count nowhere) or ``(N,)`` / ``(N, T)`` float32 targets
    (regression)."""

    x_train: Inputs
    y_train: Tensor
    x_val: Inputs
    y_val: Tensor
    task: str = "classification"
    classes: int | None = None  # declared class count (synthetic sets): the output width even if a class is unused
    ignore_index: int = IGNORE_INDEX

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The per-sample shape of the one input (``ValueError`` for several: see :attr:`input_shapes`)."""
        if isinstance(self.x_train, dict):
            raise ValueError(f"the data set has several inputs {sorted(self.x_train)}: use input_shapes")
        return tuple(int(d) for d in self.x_train.shape[1:])

    @property
    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        return sample_shapes(self.x_train)

    @property
    def num_classes(self) -> int:
        top = max(_labels(self.y_train, self.ignore_index).max(), _labels(self.y_val, self.ignore_index).max())
        return max(int(top) + 1, self.classes or 0)

    @property
    def num_outputs(self) -> int:
        """Classes (classification) or targets per sample (regression): the model's output width."""
        if self.task == "classification":
            return self.num_classes
        return int(self.y_train.shape[1]) if self.y_train.dim() == 2 else 1


def split_sizes(n: int, val_fraction: float) -> tuple[int, int]:
    """How many of ``n`` samples :func:`split` puts in training and in validation (both at least 1)."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if n < 2:
        raise InputError(
            "dataset",
            f"a data set needs at least 2 samples to split into train and validation "
            f"(or give x_val and y_val), got {n}",
        )
    n_val = min(n - 1, max(1, int(round(val_fraction * n))))
    return n - n_val, n_val


def split(
    x: Inputs,
    y: Tensor,
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
    task: str = "classification",
    ignore_index: int = IGNORE_INDEX,
) -> TensorData:
    """A seeded random train/validation split."""
    _, n_val = split_sizes(rows(x), val_fraction)
    perm = torch.randperm(rows(x), generator=torch.Generator().manual_seed(seed))
    va, tr = perm[:n_val], perm[n_val:]
    return TensorData(select(x, tr), y[tr], select(x, va), y[va], task, ignore_index=ignore_index)


def _labels(y: Tensor, ignore_index: int) -> Tensor:
    """The labels that count (``ignore_index`` entries dropped), flat; ``[-1]`` when none do."""
    kept = y[y != ignore_index]
    return kept if kept.numel() else torch.tensor([-1])


def _check_x(x: Inputs, what: str) -> Inputs:
    """Each input ``(N, ...)`` of numbers, finite; floats as float32, integers kept (token ids)."""
    if isinstance(x, dict):
        n = {rows(v) if v.dim() else 0 for v in x.values()}
        if len(n) != 1:
            raise InputError(
                "dataset",
                f"{what}: every input needs the same number of rows, got { {k: tuple(v.shape) for k, v in x.items()} }",
            )
        return {k: _check_x(v, f"{what} input {k!r}") for k, v in x.items()}  # type: ignore[misc]
    if x.dim() < 2 or x.shape[0] == 0:
        raise InputError("dataset", f"{what}: x must have shape (N, ...) with N >= 1 samples, got {tuple(x.shape)}")
    if not (x.is_floating_point() or x.dtype in INTEGER_DTYPES):
        raise InputError("dataset", f"{what}: x must hold numbers, got dtype {x.dtype}")
    if not x.is_floating_point():
        return x
    x = x.float()
    if not torch.isfinite(x).all():
        raise InputError("dataset", f"{what}: x must be finite (it holds NaN or Inf)")
    return x


def _check_y(y: Tensor, n: int, what: str, task: str, max_classes: int, ignore_index: int) -> Tensor:
    if y.shape[:1] != (n,):
        raise InputError("dataset", f"{what}: y must have {n} rows like x, got shape {tuple(y.shape)}")
    if task == "classification":
        if y.dim() not in (1, 2) or y.is_floating_point() or y.dtype == torch.bool or y.is_complex():
            raise InputError(
                "dataset",
                f"{what}: y must be integer class labels of shape ({n},) or per token "
                f"({n}, T) (or set task to 'regression'), got {y.dtype} of shape {tuple(y.shape)}",
            )
        kept = y[y != ignore_index]
        if kept.numel() == 0:
            raise InputError("dataset", f"{what}: every label equals ignore_index {ignore_index}: nothing to learn")
        lo, hi = int(kept.min()), int(kept.max())
        if lo < 0 or hi >= max_classes:
            raise InputError(
                "dataset",
                f"{what}: class labels must be in [0, {max_classes}) (the classes cap) or "
                f"equal ignore_index {ignore_index}, got {lo}..{hi}",
            )
        return y.long()
    if y.dim() not in (1, 2) or not (y.is_floating_point() or y.dtype in (torch.int32, torch.int64)):
        raise InputError(
            "dataset", f"{what}: regression targets must be numbers of shape (N,) or (N, T), got {tuple(y.shape)}"
        )
    y = y.float()
    if not torch.isfinite(y).all():
        raise InputError("dataset", f"{what}: y must be finite (it holds NaN or Inf)")
    return y


def from_tensors(
    x: Inputs,
    y: Tensor,
    x_val: Inputs | None = None,
    y_val: Tensor | None = None,
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
    task: str = "classification",
    max_classes: int = MAX_CLASSES,
    ignore_index: int = IGNORE_INDEX,
) -> TensorData:
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if (x_val is None) != (y_val is None):
        raise InputError("dataset", "give x_val and y_val together, or neither (then a split of x, y validates)")
    x = _check_x(x, "train")
    y = _check_y(y, rows(x), "train", task, max_classes, ignore_index)
    if x_val is None or y_val is None:
        return split(x, y, val_fraction=val_fraction, seed=seed, task=task, ignore_index=ignore_index)
    xv = _check_x(x_val, "validation")
    yv = _check_y(y_val, rows(xv), "validation", task, max_classes, ignore_index)
    if sample_shapes(xv) != sample_shapes(x) or yv.shape[1:] != y.shape[1:]:
        raise InputError(
            "dataset",
            f"x_val / y_val have per-sample shapes {sample_shapes(xv)} / "
            f"{tuple(yv.shape[1:])}, x / y have {sample_shapes(x)} / {tuple(y.shape[1:])}",
        )
    return TensorData(x, y, xv, yv, task, ignore_index=ignore_index)


def digits(*, val_fraction: float = 0.2, seed: int = 0) -> TensorData:
    """scikit-learn's digits, scaled to [0, 1], shape ``(N, 1, 8, 8)``."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    return split(x, y, val_fraction=val_fraction, seed=seed)


def load_tensor_file(
    path: str | Path,
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
    task: str = "classification",
    max_classes: int = MAX_CLASSES,
    ignore_index: int = IGNORE_INDEX,
) -> TensorData:
    """``.safetensors`` or ``.npz`` (no pickles) with ``x`` (or ``x.<input>`` for each input), ``y`` and
    optionally ``x_val`` (``x_val.<input>``), ``y_val``."""
    path = Path(path)
    if path.suffix == ".npz":
        import numpy as np

        with np.load(path, allow_pickle=False) as z:
            arrays = {k: torch.from_numpy(np.ascontiguousarray(z[k])) for k in z.files}
    else:
        from safetensors.torch import load_file

        arrays = load_file(str(path))
    x, x_val = input_arrays(arrays, "x"), input_arrays(arrays, "x_val")
    missing = [k for k, v in (("x", x), ("y", arrays.get("y"))) if v is None]
    if missing or x is None:
        raise ValueError(f"the data file needs arrays {missing} (has {sorted(arrays)[:20]})")
    return from_tensors(
        x,
        arrays["y"],
        x_val,
        arrays.get("y_val"),
        val_fraction=val_fraction,
        seed=seed,
        task=task,
        max_classes=max_classes,
        ignore_index=ignore_index,
    )


def input_arrays(arrays: dict[str, T], prefix: str) -> T | dict[str, T] | None:
    """``arrays[prefix]``, or the dict of ``arrays[prefix + "." + name]`` by name, or ``None`` if neither;
    an ``InputError`` for both at once. ``arrays`` may hold tensors or header records alike."""
    keyed = {k.removeprefix(prefix + "."): v for k, v in arrays.items() if k.startswith(prefix + ".")}
    if keyed and prefix in arrays:
        raise InputError(
            "dataset",
            f"the data file has {prefix!r} and {sorted(keyed)[:5]} keyed inputs: give one "
            f"input as {prefix!r} or every input as '{prefix}.<name>'",
        )
    return keyed or arrays.get(prefix)


def image_folder(
    root: str | Path,
    *,
    input_size: int,
    grayscale: bool = True,
    val_fraction: float = 0.2,
    seed: int = 0,
    within: str | Path | None = None,
) -> TensorData:
    """Images under ``root/<class>/``; classes are the sorted sub-directory names. With ``within``, every
    directory and file must resolve inside it (symbolic links included); messages name paths relative to it."""
    from PIL import Image

    root = Path(root)
    base = Path(within).resolve() if within is not None else None

    def shown(p: Path) -> str:
        return str(p.relative_to(within)) if within is not None and p.is_relative_to(within) else str(p)

    def inside(p: Path) -> bool:
        return base is None or p.resolve().is_relative_to(base)

    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and inside(p)) if root.is_dir() else []
    if not classes:
        raise ValueError(f"{shown(root)}: expected one sub-directory per class")
    xs, ys = [], []
    for label, name in enumerate(classes):
        for f in sorted((root / name).iterdir()):
            if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file() and inside(f):
                img = Image.open(f).convert("L" if grayscale else "RGB").resize((input_size, input_size))
                t = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).float() / 255.0
                xs.append(t.view(input_size, input_size, -1).permute(2, 0, 1))
                ys.append(label)
    if not xs:
        raise ValueError(f"{shown(root)}: no images found")
    return split(torch.stack(xs), torch.tensor(ys), val_fraction=val_fraction, seed=seed)


def synthetic(
    n: int = 2000,
    *,
    in_channels: int = 1,
    input_size: int = 8,
    num_classes: int = 4,
    seed: int = 0,
    val_fraction: float = 0.2,
) -> TensorData:
    """Gaussian inputs labelled by the argmax of a random two-layer teacher network; the model's output
    width is ``num_classes`` even when the teacher never picks a class."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, in_channels, input_size, input_size, generator=g)
    d = in_channels * input_size * input_size
    w1 = torch.randn(d, 32, generator=g) / d**0.5
    w2 = torch.randn(32, num_classes, generator=g) / 32**0.5
    y = (torch.relu(x.flatten(1) @ w1) @ w2).argmax(dim=1)
    data = split(x, y, val_fraction=val_fraction, seed=seed)
    data.classes = num_classes
    return data


def load_dataset(
    spec: dict,
    *,
    task: str = "classification",
    upload: Path | None = None,
    datasets_dir: Path | None = None,
    max_classes: int = MAX_CLASSES,
) -> TensorData:
    """A checkpoint job's ``dataset`` spec (``name``: ``digits``, ``synthetic``, ``upload`` with the uploaded
    file, ``folder`` under ``datasets_dir``) as tensors; ``InputError`` naming the field otherwise."""
    name = spec.get("name", "digits")
    vf, seed = spec.get("val_fraction", 0.2), spec.get("seed", 0)
    if task != "classification" and name != "upload":
        raise InputError("task", f"'{task}' needs an uploaded data set with float targets (dataset.name 'upload')")
    try:
        if name == "digits":
            return digits(val_fraction=vf, seed=seed)
        if name == "synthetic":
            return synthetic(
                spec.get("samples", 2000), num_classes=spec.get("num_classes", 4), seed=seed, val_fraction=vf
            )
        if name == "upload":
            if upload is None:
                raise InputError("dataset", "name 'upload' needs a multipart 'dataset' file (.safetensors or .npz)")
            return load_tensor_file(
                upload,
                val_fraction=vf,
                seed=seed,
                task=task,
                max_classes=max_classes,
                ignore_index=spec.get("ignore_index", IGNORE_INDEX),
            )
        if name == "folder":
            return _folder(spec, datasets_dir, vf, seed)
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - whatever a reader raises on a bad file is a bad input
        text = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise InputError("dataset", f"cannot be read: {text}") from None
    raise InputError("dataset.name", f"unknown data set {name!r}")


def datasets_root(root: Path | None) -> Path:
    """The server's data set root, resolved; a 4xx when none is configured."""
    if root is None:
        raise InputError("dataset.name", "'folder' data sets are not enabled here (RVSM_DATASETS_DIR is unset)")
    return root.resolve()


def folder_path(spec: dict, root: Path | None) -> Path:
    """The directory a ``folder`` data set names, checked to lie inside ``root`` (the server's datasets)."""
    root = datasets_root(root)
    rel = spec.get("path")
    if not rel:
        raise InputError("dataset.path", "is required for a folder data set")
    path = (root / rel).resolve()
    if not path.is_relative_to(root.resolve()):
        raise InputError("dataset.path", "must stay inside the server's datasets directory")
    if not path.is_dir():
        raise InputError("dataset.path", f"no such directory: {rel}")
    return path


def _folder(spec: dict, root: Path | None, vf: float, seed: int) -> TensorData:
    base = datasets_root(root)
    path = folder_path(spec, base)
    size = spec.get("input_size") or 32
    return image_folder(
        path, input_size=size, grayscale=spec.get("grayscale", True), val_fraction=vf, seed=seed, within=base
    )


@torch.no_grad()
def _outputs(model: nn.Module, x: Inputs, batch_size: int) -> list[Tensor]:
    dev = next(model.parameters()).device
    return [call(model, to(select(x, slice(i, i + batch_size)), dev)).cpu() for i in range(0, rows(x), batch_size)]


EVAL_BATCH = 1024  # samples per forward pass when scoring (the submit-time check counts this pass too)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    x: Inputs,
    y: Tensor,
    *,
    task: str = "classification",
    batch_size: int = EVAL_BATCH,
    ignore_index: int = IGNORE_INDEX,
) -> float:
    """Top-1 accuracy (classification: over samples, or over tokens for ``(N, T)`` labels, entries equal to
    ``ignore_index`` left out) or mean squared error (regression) of ``model`` in eval mode."""
    was_training = model.training
    model.eval()
    try:
        outs = _outputs(model, x, batch_size)
    finally:
        model.train(was_training)
    if task == "classification":
        pred = torch.cat([o.argmax(dim=-1) for o in outs]).reshape(y.shape)
        counted = y != ignore_index
        return int(((pred == y) & counted).sum()) / max(int(counted.sum()), 1)
    out = torch.cat(outs).reshape(y.shape).double()
    return float((out - y.double()).pow(2).mean())


def accuracy(model: nn.Module, x: Inputs, y: Tensor, *, batch_size: int = EVAL_BATCH) -> float:
    """Top-1 accuracy of ``model`` (in eval mode) on ``(x, y)``, on the model's device."""
    return evaluate(model, x, y, task="classification", batch_size=batch_size)


def baseline_score(data: TensorData) -> float:
    """What a network that learned nothing scores on the validation set: the majority class's accuracy
    (classification, over the labels that count) or the MSE of predicting the training mean (regression)."""
    if data.task == "classification":
        counted = data.y_val[data.y_val != data.ignore_index]
        return float(torch.bincount(counted).max()) / max(counted.numel(), 1) if counted.numel() else 0.0
    mean = data.y_train.double().mean(dim=0)
    return float((data.y_val.double() - mean).pow(2).mean())


COLLAPSE_FRACTION = 0.25  # near chance: less than this share of the way from the baseline to a perfect score


def is_collapsed(score: float, data: TensorData) -> bool:
    """Near chance: less than :data:`COLLAPSE_FRACTION` of the way from :func:`baseline_score` to a perfect
    score. Classification: accuracy below ``base + 0.25 (1 - base)`` (and never within one label of ``base``);
    regression: an MSE above ``0.75 base`` (under a quarter of the variance explained)."""
    base = baseline_score(data)
    if data.task == "classification":
        labels = max(int((data.y_val != data.ignore_index).sum()), 1)
        return score < base + COLLAPSE_FRACTION * (1.0 - base) or score <= base + 1.0 / labels
    return score > (1.0 - COLLAPSE_FRACTION) * base


def fit_inputs(data: TensorData, sig: Signature) -> TensorData:
    """``data`` with each input cast to the dtype its model takes (``sig``, by name; a single input whatever
    its name): floats for a float input, an integer input's own dtype for integers. ``InputError`` naming the
    input when its name, shape or dtype does not fit."""
    shapes = sample_shapes(data.x_train)
    check_inputs(
        {
            k: InputInfo(shapes[k], str(v.dtype).removeprefix("torch."), v.is_floating_point())
            for k, v in named(data.x_train).items()
        },
        sig,
    )
    return replace(data, x_train=_cast(data.x_train, sig), x_val=_cast(data.x_val, sig))


def _cast(x: Inputs, sig: Signature) -> Inputs:
    if not isinstance(x, dict):
        return x.to(next(iter(sig.values()))[1])
    return {k: v.to(sig[k][1]) for k, v in x.items()}


class InputInfo(NamedTuple):
    """One input of a data set: per-sample shape, dtype as the file or torch names it, whether it is float."""

    shape: tuple[int, ...]
    dtype: str
    is_float: bool


def check_inputs(data: dict[str, InputInfo], sig: Signature) -> None:
    """The data's inputs against the model's ``sig``: the same names (a single input may be called ``x``),
    shapes, and no floats into an integer input."""
    if list(data) == ["x"] and len(sig) == 1:
        data = {next(iter(sig)): data["x"]}
    if set(data) != set(sig):
        raise InputError(
            "dataset",
            f"the data's inputs are {sorted(data)}, the model takes {list(sig)} (give them "
            "as 'x.<name>' and 'x_val.<name>' arrays)",
        )
    for name, (shape, dtype) in sig.items():
        got = data[name]
        want = str(dtype).removeprefix("torch.")
        if tuple(got.shape) != tuple(shape):
            raise InputError(
                "dataset",
                f"input {name!r}: the data's samples have shape {tuple(got.shape)} "
                f"({got.dtype}), the model takes {tuple(shape)} ({want}) per sample, the batch "
                "dimension left out",
            )
        if not dtype.is_floating_point and got.is_float:
            raise InputError(
                "dataset",
                f"input {name!r}: the data holds {got.dtype}, the model takes {want} "
                f"(integers, such as token ids); give integers, shape {tuple(shape)} per sample",
            )


def output_width(shape: tuple[int, ...]) -> int:
    return math.prod(shape) if shape else 1
