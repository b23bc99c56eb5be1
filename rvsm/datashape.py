"""What a checkpoint job's data set will be, known before any of it is loaded or generated.

:func:`describe_dataset` answers from the spec (``synthetic``: the samples and classes it asks for;
``digits``: the bundled set's constants), from a directory listing (``folder``: files are counted, never
decoded) or from file headers (``upload``: :mod:`rvsm.headers`), and applies every rule a header can
decide: ``x`` and ``y`` present, ``x_val`` with ``y_val``, numeric dtypes (no objects, complex, float8),
rows that match, at least two samples to split. :mod:`rvsm.prepare` checks the result against its caps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from .data import IMAGE_SUFFIXES, InputInfo, input_arrays, split_sizes
from .errors import InputError
from .headers import ArrayInfo, read_headers

DIGITS = (1797, (1, 8, 8), 10)  # scikit-learn's digits: samples, per-sample shape, classes (tests check it)
SYNTHETIC_SHAPE = (1, 8, 8)  # rvsm.data.synthetic's default per-sample shape


@dataclass(frozen=True)
class DataShape:
    """A data set's size: ``rows`` samples in all (``train_rows`` of them train), each of ``sample_shape``;
    ``outputs`` the classes or regression targets, ``None`` while the labels are unread; ``nbytes`` what an
    upload's arrays take once read (0 for the others); ``inputs`` an upload's inputs by name (``x`` for one;
    ``sample_shape`` is then ``()`` when there are several); ``label_shape`` one sample's labels (``(T,)``
    per token)."""

    rows: int
    train_rows: int
    sample_shape: tuple[int, ...]
    outputs: int | None
    nbytes: int = 0
    inputs: dict[str, InputInfo] | None = None
    label_shape: tuple[int, ...] = ()

    @property
    def features(self) -> int:
        """Elements of one sample, every input together."""
        if self.inputs is None:
            return math.prod(self.sample_shape)
        return sum(math.prod(i.shape) for i in self.inputs.values())


def describe_dataset(
    spec: dict, *, task: str = "classification", upload: Path | None = None, datasets_dir: Path | None = None
) -> DataShape:
    """The :class:`DataShape` of a ``dataset`` spec (module docstring); ``InputError`` naming the field."""
    name, vf = spec.get("name", "digits"), spec.get("val_fraction", 0.2)
    if task != "classification" and name != "upload":
        raise InputError("task", f"'{task}' needs an uploaded data set with float targets (dataset.name 'upload')")
    if name == "digits":
        rows, shape, classes = DIGITS
        return DataShape(rows, split_sizes(rows, vf)[0], shape, classes)
    if name == "synthetic":
        rows = spec.get("samples", 2000)
        return DataShape(rows, split_sizes(rows, vf)[0], SYNTHETIC_SHAPE, spec.get("num_classes", 4))
    if name == "upload":
        if upload is None:
            raise InputError("dataset", "name 'upload' needs a multipart 'dataset' file (.safetensors or .npz)")
        return describe_upload(upload, task=task, val_fraction=vf)
    if name == "folder":
        return _describe_folder(spec, datasets_dir, vf)
    raise InputError("dataset.name", f"unknown data set {name!r}")


def describe_upload(path: Path, *, task: str, val_fraction: float) -> DataShape:
    """An uploaded file's shape from its headers, every header-level rule checked."""
    arrays = read_headers(path)
    x, xv = _inputs(arrays, "x"), _inputs(arrays, "x_val")
    missing = [k for k, v in (("x", x), ("y", arrays.get("y"))) if not v]
    if missing:
        raise InputError("dataset", f"the data file needs arrays {missing} (has {sorted(arrays)[:20]})")
    if bool(xv) != ("y_val" in arrays):
        raise InputError("dataset", "give x_val and y_val together, or neither (then a split of x, y validates)")
    y = arrays["y"]
    for name, a in [*x.items(), ("y", y), *xv.items(), ("y_val", arrays.get("y_val"))]:
        if a is not None:
            _check_dtype(name, a, task)
    _check_set(x, y, "x", "y", task)
    if xv:
        yv = arrays["y_val"]
        _check_set(xv, yv, "x_val", "y_val", task)
        if _per_sample(xv) != _per_sample(x) or yv.shape[1:] != y.shape[1:]:
            raise InputError(
                "dataset",
                f"x_val / y_val have per-sample shapes {_per_sample(xv)} / {yv.shape[1:]}, "
                f"x / y have {_per_sample(x)} / {y.shape[1:]}",
            )
    n = next(iter(x.values())).shape[0]
    rows, train = (n + next(iter(xv.values())).shape[0], n) if xv else (n, split_sizes(n, val_fraction)[0])
    outputs = None if task == "classification" else (y.shape[1] if len(y.shape) == 2 else 1)
    infos = {k: InputInfo(a.shape[1:], a.dtype, a.kind == "f") for k, a in x.items()}
    single = infos["x"].shape if list(infos) == ["x"] else ()
    return DataShape(rows, train, single, outputs, sum(a.nbytes for a in arrays.values()), infos, y.shape[1:])


def _inputs(arrays: dict[str, ArrayInfo], prefix: str) -> dict[str, ArrayInfo]:
    found = input_arrays(arrays, prefix)
    return found if isinstance(found, dict) else {"x": found} if found is not None else {}  # one input is "x"


def _per_sample(x: dict[str, ArrayInfo]) -> dict[str, tuple[int, ...]]:
    return {k: a.shape[1:] for k, a in x.items()}


def _check_dtype(name: str, a: ArrayInfo, task: str) -> None:
    labels = name.startswith("y") and task == "classification"
    ok = ("i",) if labels else ("f", "i")
    if a.kind not in ok:
        what = "integer class labels" if labels else "float or integer numbers"
        raise InputError(
            "dataset",
            f"{name} must hold {what}; it is {a.dtype} ({a.kind}), which is not accepted"
            + (" (set task to 'regression' for float targets)" if labels and a.kind == "f" else ""),
        )


def _check_set(x: dict[str, ArrayInfo], y: ArrayInfo, xn: str, yn: str, task: str) -> None:
    """Every input ``(N, ...)`` with the same ``N``, and labels ``(N,)`` or ``(N, T)``."""
    if len(y.shape) not in (1, 2):
        what = "class labels (N,) or per token (N, T)" if task == "classification" else "(N,) or (N, T)"
        raise InputError("dataset", f"{yn} must have shape {what}, got {y.shape}")
    for name, a in x.items():
        shown = xn if list(x) == ["x"] else f"{xn}.{name}"
        if len(a.shape) < 2 or a.shape[0] == 0:
            raise InputError("dataset", f"{shown} must have shape (N, ...) with N >= 1 samples, got {a.shape}")
        if y.shape[0] != a.shape[0]:
            raise InputError("dataset", f"{yn} must have {a.shape[0]} rows like {shown}, got {y.shape[0]}")
        if any(d == 0 for d in a.shape[1:] + y.shape[1:]):
            raise InputError("dataset", f"{shown} / {yn} have an empty dimension: {a.shape} / {y.shape}")


def _describe_folder(spec: dict, root: Path | None, vf: float) -> DataShape:
    from .data import datasets_root, folder_path

    base = datasets_root(root)
    path = folder_path(spec, base)
    classes = sorted(p for p in path.iterdir() if p.is_dir() and p.resolve().is_relative_to(base))
    rows = sum(1 for c in classes for f in c.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    if not classes or not rows:
        raise InputError("dataset.path", f"{spec.get('path')}: expected one sub-directory of images per class")
    size = spec.get("input_size") or 32
    return DataShape(
        rows, split_sizes(rows, vf)[0], (1 if spec.get("grayscale", True) else 3, size, size), len(classes)
    )
