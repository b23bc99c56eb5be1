"""Data sets for checkpoint jobs, as in-memory tensors.

- :func:`digits`: scikit-learn's bundled handwritten digits (real data, 1,797 8x8 images, 10 classes).
- :func:`load_tensor_file`: a user's ``.safetensors`` or ``.npz`` with ``x``, ``y`` and optional ``x_val``,
  ``y_val``; ``x`` of any per-sample shape (images, flat features), ``y`` class labels (classification) or
  float targets (regression).
- :func:`image_folder`: a server-side directory ``root/<class name>/<image files>`` (ImageFolder layout;
  classes sorted by name; images resized to ``input_size`` square; grayscale or RGB).
- :func:`synthetic`: a teacher-student set (a random teacher network labels Gaussian inputs), for tests.
- :func:`load_dataset`: a checkpoint job's ``dataset`` spec to one of the above, errors naming the field.

scikit-learn, NumPy and Pillow are imported only by the loaders that need them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from .errors import InputError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}
TASKS = ("classification", "regression")
MAX_CLASSES = 10_000


@dataclass
class TensorData:
    """Train and validation tensors: ``x`` is ``(N, *sample_shape)`` float32; ``y`` is ``(N,)`` int64 class
    labels (classification) or ``(N,)`` / ``(N, T)`` float32 targets (regression)."""

    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    task: str = "classification"
    classes: int | None = None  # declared class count (synthetic sets): the output width even if a class is unused

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.x_train.shape[1:])

    @property
    def in_channels(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def input_size(self) -> int:
        return int(self.x_train.shape[-1])

    @property
    def num_classes(self) -> int:
        return max(int(max(self.y_train.max(), self.y_val.max()) + 1), self.classes or 0)

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
        raise InputError("dataset", f"a data set needs at least 2 samples to split into train and validation "
                                    f"(or give x_val and y_val), got {n}")  # fmt: skip
    n_val = min(n - 1, max(1, int(round(val_fraction * n))))
    return n - n_val, n_val


def split(
    x: Tensor, y: Tensor, *, val_fraction: float = 0.2, seed: int = 0, task: str = "classification"
) -> TensorData:
    """A seeded random train/validation split."""
    n = x.shape[0]
    _, n_val = split_sizes(n, val_fraction)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    va, tr = perm[:n_val], perm[n_val:]
    return TensorData(x[tr], y[tr], x[va], y[va], task)


def _check(x: Tensor, y: Tensor, what: str, task: str, max_classes: int) -> tuple[Tensor, Tensor]:
    if x.dim() < 2 or x.shape[0] == 0:
        raise InputError("dataset", f"{what}: x must have shape (N, ...) with N >= 1 samples, got {tuple(x.shape)}")
    if not (x.is_floating_point() or x.dtype in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)):
        raise InputError("dataset", f"{what}: x must hold numbers, got dtype {x.dtype}")
    if y.shape[:1] != x.shape[:1]:
        raise InputError("dataset", f"{what}: y must have {x.shape[0]} rows like x, got shape {tuple(y.shape)}")
    x = x.float()
    if not torch.isfinite(x).all():
        raise InputError("dataset", f"{what}: x must be finite (it holds NaN or Inf)")
    if task == "classification":
        if y.dim() != 1 or y.is_floating_point() or y.dtype == torch.bool or y.is_complex():
            raise InputError("dataset", f"{what}: y must be integer class labels of shape ({x.shape[0]},) (or set "
                             f"task to 'regression'), got {y.dtype} of shape {tuple(y.shape)}")  # fmt: skip
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= max_classes:
            raise InputError("dataset", f"{what}: class labels must be in [0, {max_classes}) (the classes cap), "
                                        f"got {lo}..{hi}")  # fmt: skip
        return x, y.long()
    if y.dim() not in (1, 2) or not (y.is_floating_point() or y.dtype in (torch.int32, torch.int64)):
        raise InputError("dataset", f"{what}: regression targets must be numbers of shape (N,) or (N, T), "
                                    f"got {tuple(y.shape)}")  # fmt: skip
    y = y.float()
    if not torch.isfinite(y).all():
        raise InputError("dataset", f"{what}: y must be finite (it holds NaN or Inf)")
    return x, y


def from_tensors(
    x: Tensor,
    y: Tensor,
    x_val: Tensor | None = None,
    y_val: Tensor | None = None,
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
    task: str = "classification",
    max_classes: int = MAX_CLASSES,
) -> TensorData:
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if (x_val is None) != (y_val is None):
        raise InputError("dataset", "give x_val and y_val together, or neither (then a split of x, y validates)")
    x, y = _check(x, y, "train", task, max_classes)
    if x_val is None or y_val is None:
        return split(x, y, val_fraction=val_fraction, seed=seed, task=task)
    xv, yv = _check(x_val, y_val, "validation", task, max_classes)
    if xv.shape[1:] != x.shape[1:] or yv.shape[1:] != y.shape[1:]:
        raise InputError("dataset", f"x_val / y_val have per-sample shapes {tuple(xv.shape[1:])} / "
                         f"{tuple(yv.shape[1:])}, x / y have {tuple(x.shape[1:])} / {tuple(y.shape[1:])}")  # fmt: skip
    return TensorData(x, y, xv, yv, task)


def digits(*, val_fraction: float = 0.2, seed: int = 0) -> TensorData:
    """scikit-learn's digits, scaled to [0, 1], shape ``(N, 1, 8, 8)``."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    return split(x, y, val_fraction=val_fraction, seed=seed)


def load_tensor_file(
    path: str | Path, *, val_fraction: float = 0.2, seed: int = 0, task: str = "classification",
    max_classes: int = MAX_CLASSES,
) -> TensorData:  # fmt: skip
    """``.safetensors`` or ``.npz`` (no pickles) with ``x``, ``y`` and optionally ``x_val``, ``y_val``."""
    path = Path(path)
    if path.suffix == ".npz":
        import numpy as np

        with np.load(path, allow_pickle=False) as z:
            arrays = {k: torch.from_numpy(np.ascontiguousarray(z[k])) for k in z.files}
    else:
        from safetensors.torch import load_file

        arrays = load_file(str(path))
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise ValueError(f"the data file needs arrays {missing} (has {sorted(arrays)})")
    return from_tensors(
        arrays["x"], arrays["y"], arrays.get("x_val"), arrays.get("y_val"), val_fraction=val_fraction, seed=seed,
        task=task, max_classes=max_classes,
    )  # fmt: skip


def image_folder(
    root: str | Path, *, input_size: int, grayscale: bool = True, val_fraction: float = 0.2, seed: int = 0,
    within: str | Path | None = None,
) -> TensorData:  # fmt: skip
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
    n: int = 2000, *, in_channels: int = 1, input_size: int = 8, num_classes: int = 4, seed: int = 0,
    val_fraction: float = 0.2,
) -> TensorData:  # fmt: skip
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
    spec: dict, *, task: str = "classification", upload: Path | None = None, datasets_dir: Path | None = None,
    max_classes: int = MAX_CLASSES,
) -> TensorData:  # fmt: skip
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
            return synthetic(spec.get("samples", 2000), num_classes=spec.get("num_classes", 4), seed=seed,
                             val_fraction=vf)  # fmt: skip
        if name == "upload":
            if upload is None:
                raise InputError("dataset", "name 'upload' needs a multipart 'dataset' file (.safetensors or .npz)")
            return load_tensor_file(upload, val_fraction=vf, seed=seed, task=task, max_classes=max_classes)
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
    return image_folder(path, input_size=size, grayscale=spec.get("grayscale", True), val_fraction=vf, seed=seed,
                        within=base)  # fmt: skip


@torch.no_grad()
def _outputs(model: nn.Module, x: Tensor, batch_size: int) -> list[Tensor]:
    dev = next(model.parameters()).device
    return [model(x[i : i + batch_size].to(dev)).cpu() for i in range(0, x.shape[0], batch_size)]


EVAL_BATCH = 1024  # samples per forward pass when scoring (the submit-time check counts this pass too)


@torch.no_grad()
def evaluate(
    model: nn.Module, x: Tensor, y: Tensor, *, task: str = "classification", batch_size: int = EVAL_BATCH
) -> float:
    """Top-1 accuracy (classification) or mean squared error (regression) of ``model`` in eval mode."""
    was_training = model.training
    model.eval()
    try:
        outs = _outputs(model, x, batch_size)
    finally:
        model.train(was_training)
    if task == "classification":
        pred = torch.cat([o.argmax(dim=1) for o in outs])
        return int((pred == y).sum()) / max(x.shape[0], 1)
    out = torch.cat(outs).reshape(y.shape).double()
    return float((out - y.double()).pow(2).mean())


def accuracy(model: nn.Module, x: Tensor, y: Tensor, *, batch_size: int = EVAL_BATCH) -> float:
    """Top-1 accuracy of ``model`` (in eval mode) on ``(x, y)``, on the model's device."""
    return evaluate(model, x, y, task="classification", batch_size=batch_size)


def baseline_score(data: TensorData) -> float:
    """What a network that learned nothing scores on the validation set: the majority class's accuracy
    (classification) or the MSE of predicting the training mean (regression)."""
    if data.task == "classification":
        return float(torch.bincount(data.y_val).max()) / max(len(data.y_val), 1)
    mean = data.y_train.double().mean(dim=0)
    return float((data.y_val.double() - mean).pow(2).mean())


def is_collapsed(score: float, data: TensorData) -> bool:
    """No better than :func:`baseline_score` (classification: within one sample; regression: MSE at least
    99% of it)."""
    base = baseline_score(data)
    if data.task == "classification":
        return score <= base + 1.0 / max(len(data.y_val), 1)
    return score >= 0.99 * base


def check_input_shape(sample_shape: tuple[int, ...], model_input: tuple[int, ...]) -> None:
    if tuple(sample_shape) != tuple(model_input):
        raise InputError(
            "dataset", f"the data's samples have shape {tuple(sample_shape)}, the model takes inputs of shape "
            f"{tuple(model_input)} (per sample, the batch dimension left out)",
        )  # fmt: skip


def output_width(shape: tuple[int, ...]) -> int:
    return math.prod(shape) if shape else 1
