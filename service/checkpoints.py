"""Checkpoint jobs' inputs: reading uploaded checkpoints safely, the data set, the model (no web imports).

Checkpoints are ``safetensors`` files, or ``.pt`` state_dicts read with ``torch.load(weights_only=True)``,
which refuses any pickle that is more than tensors and containers: code inside a pickle never runs.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import torch
from torch import Tensor, nn

from rvsm import data as rdata
from rvsm import models

from .config import Settings


class InputError(ValueError):
    """A bad input file or spec; ``field`` names it (``checkpoint``, ``dataset``, ``dataset.path``, ...)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.rule = message


def read_checkpoint(data: bytes) -> dict[str, Tensor]:
    """A flat ``{name: tensor}`` state_dict from safetensors or ``.pt`` bytes; ``InputError`` otherwise."""
    if not data:
        raise InputError("checkpoint", "the file is empty")
    if data[:2] == b"PK" or data[:1] == b"\x80":  # a torch.save zip archive, or a bare pickle
        try:
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            first = str(e).strip().splitlines()[0][:300]
            raise InputError(
                "checkpoint",
                f"refused: the pickle holds more than tensors (only a state_dict is accepted; it was not run): {first}",
            ) from None
        except Exception as e:
            raise InputError("checkpoint", f"not a readable .pt state_dict (truncated or corrupt?): {e}") from None
        if isinstance(obj, dict) and set(obj) == {"state_dict"} and isinstance(obj["state_dict"], dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
            raise InputError("checkpoint", "a .pt checkpoint must be a state_dict: a dict of name -> tensor")
        return dict(obj)
    try:
        from safetensors.torch import load

        return load(data)
    except Exception as e:
        raise InputError(
            "checkpoint", f"not a safetensors file or a .pt state_dict (truncated or another format?): {e}"
        ) from None


def check_against(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Same keys and shapes as ``model``'s state_dict, or an ``InputError`` naming the differences."""
    want = model.state_dict()
    missing = sorted(set(want) - set(state))
    unexpected = sorted(set(state) - set(want))
    shapes = [
        f"{k} {tuple(state[k].shape)} (expected {tuple(want[k].shape)})"
        for k in want
        if k in state and state[k].shape != want[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {missing}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected}")
    if shapes:
        problems.append(f"shape mismatches {shapes}")
    if problems:
        raise InputError("checkpoint", "does not match the architecture: " + "; ".join(problems))
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise InputError("checkpoint", f"tensors with NaN or Inf: {bad}")


def load_dataset(ds: dict, *, upload: Path | None, settings: Settings) -> rdata.TensorData:
    """The job's data set from its ``dataset`` spec (and the uploaded file for ``upload``)."""
    name = ds.get("name", "digits")
    vf, seed = ds.get("val_fraction", 0.2), ds.get("seed", 0)
    try:
        if name == "digits":
            return rdata.digits(val_fraction=vf, seed=seed)
        if name == "synthetic":
            return rdata.synthetic(ds.get("samples", 2000), num_classes=ds.get("num_classes", 4), seed=seed)
        if name == "upload":
            if upload is None:
                raise InputError("dataset", "name 'upload' needs a multipart 'dataset' file (.safetensors or .npz)")
            return rdata.load_tensor_file(upload, val_fraction=vf, seed=seed)
        if name == "folder":
            root = settings.datasets_dir
            if root is None:
                raise InputError("dataset.name", "'folder' data sets are not enabled here (RVSM_DATASETS_DIR is unset)")
            rel = ds.get("path")
            if not rel:
                raise InputError("dataset.path", "is required for a folder data set")
            path = (root / rel).resolve()
            if not path.is_relative_to(root.resolve()):
                raise InputError("dataset.path", "must stay inside the server's datasets directory")
            if not path.is_dir():
                raise InputError("dataset.path", f"no such directory: {rel}")
            size = ds.get("input_size") or 32
            return rdata.image_folder(path, input_size=size, grayscale=ds.get("grayscale", True), val_fraction=vf,
                                      seed=seed)  # fmt: skip
    except InputError:
        raise
    except (ValueError, OSError, RuntimeError) as e:
        raise InputError("dataset", str(e)) from None
    raise InputError("dataset.name", f"unknown data set {name!r}")


def build_model(spec: dict, data: rdata.TensorData) -> nn.Module:
    try:
        return models.build(
            spec["architecture"],
            in_channels=data.in_channels,
            input_size=data.input_size,
            num_classes=data.num_classes,
        )
    except ValueError as e:
        raise InputError("architecture", f"cannot be built for this data set: {e}") from None
