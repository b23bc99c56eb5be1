"""A compact file for sparse state_dicts: per tensor a bitmask of its non-zeros and their values.

Layout (little-endian)::

    b"RVSMSPRS" | u32 version (1) | u64 header length | header JSON | blobs

The header lists each tensor's name, dtype, shape, encoding and the byte offset and length of its
blobs. ``bitmask``: ``ceil(n/8)`` bytes of packed bits (bit i set where entry i is non-zero, LSB
first) followed by the non-zero values in order; ``dense``: the raw values (used when a bitmask would
not be smaller). "Non-zero" compares bit patterns, so ``-0.0`` and NaN survive: :func:`load`
returns tensors bit-identical to the ones saved. The information limit for a tensor of ``n`` entries
with ``k`` non-zeros is ``k`` values plus ``n`` bits; the bitmask encoding is that plus at most 7 bits
of padding per tensor (and the header).
"""

from __future__ import annotations

import io
import json
import math
import struct

import torch
from torch import Tensor

MAGIC = b"RVSMSPRS"
VERSION = 1
_INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_DTYPES = {
    str(t).removeprefix("torch."): t
    for t in (
        torch.float64,
        torch.float32,
        torch.float16,
        torch.bfloat16,
        torch.int64,
        torch.int32,
        torch.int16,
        torch.int8,
        torch.uint8,
        torch.bool,
    )
}


def _nonzero_mask(t: Tensor) -> Tensor:
    flat = t.reshape(-1)
    if t.dtype == torch.bool:
        return flat
    return flat.view(_INT_VIEW[t.element_size()]) != 0


def _raw(t: Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def encode_tensor(t: Tensor) -> tuple[str, bytes]:
    """``(encoding, bytes)`` of one tensor: bitmask + values, or dense when that is not smaller."""
    t = t.detach().cpu().contiguous()
    n = t.numel()
    mask = _nonzero_mask(t)
    k = int(mask.sum())
    bitmask_size = math.ceil(n / 8) + k * t.element_size()
    if t.dtype == torch.bool or bitmask_size >= n * t.element_size():
        return "dense", _raw(t)
    pad = (-n) % 8
    bits = torch.cat([mask, torch.zeros(pad, dtype=torch.bool)]).view(-1, 8).to(torch.uint8)
    packed = (bits << torch.arange(8, dtype=torch.uint8)).sum(dim=1, dtype=torch.uint8)
    values = t.reshape(-1)[mask]
    return "bitmask", packed.numpy().tobytes() + _raw(values)


def decode_tensor(encoding: str, data: bytes, dtype: torch.dtype, shape: list[int]) -> Tensor:
    n = math.prod(shape)
    size = torch.empty((), dtype=dtype).element_size()
    if n == 0:
        return torch.empty(shape, dtype=dtype)
    if encoding == "dense":
        if len(data) != n * size:
            raise ValueError(f"dense blob has {len(data)} bytes, expected {n * size}")
        return torch.frombuffer(bytearray(data), dtype=torch.uint8).view(dtype).reshape(shape).clone()
    if encoding != "bitmask":
        raise ValueError(f"unknown encoding {encoding!r}")
    nbytes = math.ceil(n / 8)
    packed = torch.frombuffer(bytearray(data[:nbytes]), dtype=torch.uint8)
    bits = ((packed.unsqueeze(1) >> torch.arange(8, dtype=torch.uint8)) & 1).reshape(-1)[:n].bool()
    k = int(bits.sum())
    vals = data[nbytes:]
    if len(vals) != k * size:
        raise ValueError(f"bitmask blob holds {len(vals)} value bytes, expected {k * size}")
    out = torch.zeros(n, dtype=dtype)
    if k:
        out[bits] = torch.frombuffer(bytearray(vals), dtype=torch.uint8).view(dtype)
    return out.reshape(shape)


def dumps(state_dict: dict[str, Tensor]) -> bytes:
    """Serialise a state_dict (tensors of any shape; float, int or bool dtypes)."""
    header: dict = {"tensors": []}
    blobs = []
    offset = 0
    for name, t in state_dict.items():
        if not isinstance(t, Tensor):
            raise ValueError(f"{name}: only tensors can be saved, got {type(t).__name__}")
        dtype = str(t.dtype).removeprefix("torch.")
        if dtype not in _DTYPES:
            raise ValueError(f"{name}: dtype {t.dtype} is not supported")
        enc, blob = encode_tensor(t)
        header["tensors"].append(
            {
                "name": name,
                "dtype": dtype,
                "shape": list(t.shape),
                "encoding": enc,
                "offset": offset,
                "length": len(blob),
                "nnz": int(_nonzero_mask(t.detach().cpu().contiguous()).sum()),
            }
        )
        blobs.append(blob)
        offset += len(blob)
    head = json.dumps(header, separators=(",", ":")).encode()
    return MAGIC + struct.pack("<IQ", VERSION, len(head)) + head + b"".join(blobs)


def loads(data: bytes) -> dict[str, Tensor]:
    """Inverse of :func:`dumps`: the state_dict, bit-exact. Raises ``ValueError`` on a bad file."""
    if len(data) < 20 or data[:8] != MAGIC:
        raise ValueError("not an rvsm sparse file (bad magic)")
    version, hlen = struct.unpack("<IQ", data[8:20])
    if version != VERSION:
        raise ValueError(f"unsupported sparse file version {version}")
    if 20 + hlen > len(data):
        raise ValueError("truncated sparse file (header)")
    try:
        header = json.loads(data[20 : 20 + hlen])
    except ValueError as e:
        raise ValueError(f"corrupt sparse file header: {e}") from None
    base = 20 + hlen
    out = {}
    for entry in header["tensors"]:
        start, end = base + entry["offset"], base + entry["offset"] + entry["length"]
        if end > len(data):
            raise ValueError(f"truncated sparse file (tensor {entry['name']})")
        out[entry["name"]] = decode_tensor(entry["encoding"], data[start:end], _DTYPES[entry["dtype"]], entry["shape"])
    return out


def save(state_dict: dict[str, Tensor], path: str) -> None:
    with open(path, "wb") as f:
        f.write(dumps(state_dict))


def load(path_or_bytes: str | bytes | io.BufferedIOBase) -> dict[str, Tensor]:
    """Read a ``model.sparse`` file (a path, bytes, or a binary file object) back into a state_dict."""
    if isinstance(path_or_bytes, bytes | bytearray):
        return loads(bytes(path_or_bytes))
    if isinstance(path_or_bytes, str):
        with open(path_or_bytes, "rb") as f:
            return loads(f.read())
    return loads(path_or_bytes.read())


def information_limit_bytes(state_dict: dict[str, Tensor]) -> int:
    """Bytes of the non-zero values plus one bit per entry, summed over tensors (rounded up per tensor)."""
    total = 0
    for t in state_dict.values():
        k = int(_nonzero_mask(t.detach().cpu().contiguous()).sum())
        total += k * t.element_size() + math.ceil(t.numel() / 8)
    return total
