"""Shapes and dtypes of the arrays in an uploaded ``.safetensors`` or ``.npz``, read from headers only.

Nothing here reads array data: a safetensors file starts with an 8-byte little-endian header length and a
JSON header (``{name: {"dtype", "shape", "data_offsets"}}``); an ``.npz`` is a zip of ``.npy`` files, each
starting with a magic string and a small header (``numpy.lib.format``), read through :mod:`zipfile`'s
streaming reader, so a compressed member is inflated only as far as its header. Callers check the shapes
against their caps before loading anything (:mod:`rvsm.prepare`).
"""

from __future__ import annotations

import json
import math
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .errors import InputError

MAX_HEADER_BYTES = 100 * 2**20  # safetensors' own limit on the JSON header
MAX_ARRAYS = 1000
# dtype -> (kind, bytes per element); kind "f" float, "i" integer, anything else is refused by the callers
SAFETENSORS_DTYPES = {
    "F64": ("f", 8),
    "F32": ("f", 4),
    "F16": ("f", 2),
    "BF16": ("f", 2),
    "I64": ("i", 8),
    "I32": ("i", 4),
    "I16": ("i", 2),
    "I8": ("i", 1),
    "U8": ("i", 1),
    "BOOL": ("bool", 1),
    "F8_E4M3": ("float8", 1),
    "F8_E5M2": ("float8", 1),
    "U16": ("unsigned", 2),
    "U32": ("unsigned", 4),
    "U64": ("unsigned", 8),
    "C64": ("complex", 8),
    "C128": ("complex", 16),
}


@dataclass(frozen=True)
class ArrayInfo:
    """One array as its header describes it."""

    shape: tuple[int, ...]
    dtype: str  # as the file names it: ``F32`` (safetensors), ``float32`` (npz)
    kind: str  # "f" float, "i" integer; otherwise why it is refused ("complex", "float8", "object", ...)
    nbytes: int


def read_headers(path: str | Path, *, field: str = "dataset") -> dict[str, ArrayInfo]:
    """The arrays of a ``.npz`` (by suffix) or ``.safetensors`` file; ``InputError(field, ...)`` when the file
    is not what its name says."""
    path = Path(path)
    if path.suffix == ".npz":
        return npz_headers(path, field=field)
    with open(path, "rb") as f:
        return safetensors_headers(f, size=path.stat().st_size, field=field)


def safetensors_headers(f: BinaryIO, *, size: int, field: str = "checkpoint") -> dict[str, ArrayInfo]:
    """The tensors a safetensors stream of ``size`` bytes declares, from its header alone."""
    if size == 0:
        raise InputError(field, "the file is empty")
    head = f.read(8)
    n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
    if not 2 <= n <= min(MAX_HEADER_BYTES, size - 8):
        raise InputError(
            field, f"not a safetensors file: the 8-byte header length {n} does not fit the file's {size} bytes"
        )
    try:
        header = json.loads(f.read(n))
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(field, f"not a safetensors file: its header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise InputError(field, "not a safetensors file: its header is not a JSON object")
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        if not (
            isinstance(meta, dict)
            and isinstance(meta.get("shape"), list)
            and isinstance(meta.get("dtype"), str)
            and all(isinstance(d, int) and d >= 0 for d in meta["shape"])
        ):
            raise InputError(field, f"not a safetensors file: tensor {name!r} has no valid dtype and shape")
        kind, size_ = SAFETENSORS_DTYPES.get(meta["dtype"], ("unknown", 1))
        shape = tuple(meta["shape"])
        out[name] = ArrayInfo(shape, meta["dtype"], kind, math.prod(shape) * size_)
    declared = sum(a.nbytes for a in out.values())
    if declared > size - 8 - n:  # safetensors stores raw bytes: the shapes must fit in the file
        raise InputError(
            field,
            f"not a safetensors file (truncated?): its header declares {declared} bytes of "
            f"tensors, the file holds {size - 8 - n}",
        )
    return _bounded(out, field)


def npz_headers(path: str | Path, *, field: str = "dataset") -> dict[str, ArrayInfo]:
    """The arrays of an ``.npz`` from each member's ``.npy`` header (the data is never inflated)."""
    import numpy as np

    try:
        z = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise InputError(field, f"not a .npz file (a zip of .npy arrays): {e}") from None
    out = {}
    with z:
        for info in z.infolist()[: MAX_ARRAYS + 1]:
            if not info.filename.endswith(".npy"):
                raise InputError(field, f"not a .npz file: member {info.filename[:100]!r} is not a .npy array")
            try:
                with z.open(info) as member:
                    version = np.lib.format.read_magic(member)
                    read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
                    if version not in read:
                        raise ValueError(f"unsupported .npy format version {version}")
                    shape, _, dtype = read[version](member)
            except (ValueError, OSError, zipfile.BadZipFile, EOFError, NotImplementedError) as e:
                raise InputError(field, f"not a readable .npz: member {info.filename[:100]!r}: {e}") from None
            out[info.filename[: -len(".npy")]] = ArrayInfo(
                tuple(shape), str(dtype), _numpy_kind(dtype), math.prod(shape) * dtype.itemsize
            )
    return _bounded(out, field)


def _numpy_kind(dtype: object) -> str:
    if dtype.hasobject:  # type: ignore[attr-defined]
        return "object"
    kind, size = dtype.kind, dtype.itemsize  # type: ignore[attr-defined]
    if kind == "f" and size in (2, 4, 8):
        return "f"
    if kind == "i" or (kind == "u" and size == 1):
        return "i"
    return {"b": "bool", "c": "complex", "u": "unsigned"}.get(kind, "not numeric")


def _bounded(arrays: dict[str, ArrayInfo], field: str) -> dict[str, ArrayInfo]:
    if len(arrays) > MAX_ARRAYS:
        raise InputError(field, f"holds more than {MAX_ARRAYS} arrays")
    return arrays
