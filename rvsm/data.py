"""Data sets for checkpoint jobs, as in-memory tensors.

- :func:`digits`: scikit-learn's bundled handwritten digits (real data, 1,797 8x8 images, 10 classes).
- :func:`load_tensor_file`: a user's ``.safetensors`` or ``.npz`` with ``x``, ``y`` and optional ``x_val``, ``y_val``.
- :func:`image_folder`: a server-side directory ``root/<class name>/<image files>`` (ImageFolder layout;
  classes sorted by name; images resized to ``input_size`` square; grayscale or RGB).
- :func:`synthetic`: a teacher-student set (a random teacher network labels Gaussian inputs), for tests.

scikit-learn, NumPy and Pillow are imported only by the loaders that need them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


@dataclass
class TensorData:
    """Train and validation tensors: ``x`` is ``(N, C, H, W)`` float32, ``y`` is ``(N,)`` int64."""

    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor

    @property
    def in_channels(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def input_size(self) -> int:
        return int(self.x_train.shape[-1])

    @property
    def num_classes(self) -> int:
        return int(max(self.y_train.max(), self.y_val.max()) + 1)


def split(x: Tensor, y: Tensor, *, val_fraction: float = 0.2, seed: int = 0) -> TensorData:
    """A seeded random train/validation split."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n = x.shape[0]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = max(1, int(round(val_fraction * n)))
    va, tr = perm[:n_val], perm[n_val:]
    return TensorData(x[tr], y[tr], x[va], y[va])


def _check(x: Tensor, y: Tensor, what: str) -> tuple[Tensor, Tensor]:
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() != 4 or x.shape[2] != x.shape[3]:
        raise ValueError(f"{what}: x must have shape (N, C, S, S) or (N, S, S), got {tuple(x.shape)}")
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"{what}: y must have shape ({x.shape[0]},), got {tuple(y.shape)}")
    if y.is_floating_point() or (y.numel() and int(y.min()) < 0):
        raise ValueError(f"{what}: y must hold non-negative integer class labels")
    if not torch.isfinite(x.float()).all():
        raise ValueError(f"{what}: x must be finite")
    return x.float(), y.long()


def from_tensors(
    x: Tensor,
    y: Tensor,
    x_val: Tensor | None = None,
    y_val: Tensor | None = None,
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> TensorData:
    x, y = _check(x, y, "train")
    if x_val is None or y_val is None:
        return split(x, y, val_fraction=val_fraction, seed=seed)
    xv, yv = _check(x_val, y_val, "validation")
    if xv.shape[1:] != x.shape[1:]:
        raise ValueError(f"x_val has shape {tuple(xv.shape[1:])} per sample, x has {tuple(x.shape[1:])}")
    return TensorData(x, y, xv, yv)


def digits(*, val_fraction: float = 0.2, seed: int = 0) -> TensorData:
    """scikit-learn's digits, scaled to [0, 1], shape ``(N, 1, 8, 8)``."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    return split(x, y, val_fraction=val_fraction, seed=seed)


def load_tensor_file(path: str | Path, *, val_fraction: float = 0.2, seed: int = 0) -> TensorData:
    """``.safetensors`` or ``.npz`` (no pickles) with ``x``, ``y`` and optionally ``x_val``, ``y_val``."""
    path = Path(path)
    if path.suffix == ".npz":
        import numpy as np

        with np.load(path, allow_pickle=False) as z:
            arrays = {k: torch.from_numpy(z[k]) for k in z.files}
    else:
        from safetensors.torch import load_file

        arrays = load_file(str(path))
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise ValueError(f"the data file needs arrays {missing} (has {sorted(arrays)})")
    return from_tensors(
        arrays["x"], arrays["y"], arrays.get("x_val"), arrays.get("y_val"), val_fraction=val_fraction, seed=seed
    )


def image_folder(
    root: str | Path, *, input_size: int, grayscale: bool = True, val_fraction: float = 0.2, seed: int = 0
) -> TensorData:
    """Images under ``root/<class>/``; classes are the sorted sub-directory names."""
    from PIL import Image

    root = Path(root)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if not classes:
        raise ValueError(f"{root}: expected one sub-directory per class")
    xs, ys = [], []
    for label, name in enumerate(classes):
        for f in sorted((root / name).iterdir()):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                img = Image.open(f).convert("L" if grayscale else "RGB").resize((input_size, input_size))
                t = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).float() / 255.0
                xs.append(t.view(input_size, input_size, -1).permute(2, 0, 1))
                ys.append(label)
    if not xs:
        raise ValueError(f"{root}: no images found")
    return split(torch.stack(xs), torch.tensor(ys), val_fraction=val_fraction, seed=seed)


def synthetic(
    n: int = 2000, *, in_channels: int = 1, input_size: int = 8, num_classes: int = 4, seed: int = 0
) -> TensorData:
    """Gaussian inputs labelled by the argmax of a random two-layer teacher network."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, in_channels, input_size, input_size, generator=g)
    d = in_channels * input_size * input_size
    w1 = torch.randn(d, 32, generator=g) / d**0.5
    w2 = torch.randn(32, num_classes, generator=g) / 32**0.5
    y = (torch.relu(x.flatten(1) @ w1) @ w2).argmax(dim=1)
    return split(x, y, seed=seed)


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor, *, batch_size: int = 1024) -> float:
    """Top-1 accuracy of ``model`` (in eval mode) on ``(x, y)``, on the model's device."""
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    correct = 0
    for i in range(0, x.shape[0], batch_size):
        out = model(x[i : i + batch_size].to(dev))
        correct += int((out.argmax(dim=1).cpu() == y[i : i + batch_size]).sum())
    model.train(was_training)
    return correct / max(x.shape[0], 1)
