"""Uploaded checkpoints, read safely: safetensors, or ``.pt`` state_dicts in the forms people save them.

``.pt`` files are read with ``torch.load(weights_only=True)``, which refuses any pickle that is more
than tensors and containers: code inside a pickle never runs. What training scripts wrap around a
state_dict is unwrapped (``{"state_dict": ...}`` as Lightning saves it, ``{"model": ...}``,
``{"model_state_dict": ...}``), and the prefixes that wrappers add to every key are stripped
(``module.`` from DataParallel / DistributedDataParallel, ``_orig_mod.`` from ``torch.compile``, ``model.``
from a LightningModule that holds the network as ``self.model``), each only when every key carries it (a
state_dict where only some keys do is left as it is, and its keys fail to match by name); each step taken is
reported, so the job says what it normalised.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .errors import InputError

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
PREFIXES = {
    "module.": "",
    "_orig_mod.": "",
    "model.": " (a LightningModule's self.model)",
}  # stripped while every key carries one, in any order (Lightning's "model._orig_mod.", DDP's "module.model.")
WHOLE_MODEL = (
    "this .pt holds a whole pickled model, which is never unpickled here; save its weights instead, "
    "torch.save(model.state_dict(), 'model.pt'), or export it: "
    "torch.export.save(torch.export.export(model, (x,)), 'model.pt2')"
)


@dataclass
class StateDict:
    tensors: dict[str, Tensor]
    normalised: list[str] = field(default_factory=list)  # what was unwrapped or stripped, in words


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def _unsafe_globals(data: bytes) -> list[str]:
    """The classes and functions a ``.pt`` pickle names beyond tensors (read from its opcodes, never run)."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(data)))
    except Exception:  # noqa: BLE001 - not a zip checkpoint (a bare pickle): inspect nothing more
        return []


def _load_pt(data: bytes) -> object:
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        names = _unsafe_globals(data)
        if any(n.startswith(("torch.nn.modules.", "__main__.")) or ".nn." in n for n in names):
            raise InputError("checkpoint", WHOLE_MODEL) from None
        shown = f" ({', '.join(names[:5])})" if names else ""
        raise InputError(
            "checkpoint",
            f"refused: the pickle holds more than tensors{shown}; only a state_dict is accepted, "
            "and the pickle was not run",
        ) from None
    except Exception as e:  # noqa: BLE001 - any reader failure is a bad file
        raise InputError(
            "checkpoint", f"not a readable .pt state_dict (truncated or corrupt?): {_first_line(e)}"
        ) from None


def unwrap(obj: object) -> StateDict:
    """A flat ``{name: tensor}`` from what training scripts save, with the steps taken."""
    notes = []
    while isinstance(obj, dict):
        key = next((k for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if key is None or all(isinstance(v, Tensor) for v in obj.values()):
            break
        notes.append(f"unwrapped {{{key!r}: ...}}" + (f" (ignored {sorted(set(obj) - {key})})" if len(obj) > 1 else ""))
        obj = obj[key]
    if not isinstance(obj, dict) or not obj:
        raise InputError("checkpoint", "a .pt checkpoint must be a state_dict: a dict of name -> tensor")
    bad = [str(k) for k, v in obj.items() if not (isinstance(k, str) and isinstance(v, Tensor))]
    if bad:
        raise InputError("checkpoint", f"a state_dict maps names to tensors; these entries are not tensors: {bad[:10]}")
    tensors: dict[str, Tensor] = dict(obj)
    while (prefix := next((p for p in PREFIXES if all(k.startswith(p) and k != p for k in tensors)), None)) is not None:
        tensors = {k[len(prefix) :]: v for k, v in tensors.items()}
        notes.append(f"stripped the prefix {prefix!r} from every key{PREFIXES[prefix]}")
    return StateDict(tensors, notes)


TORCH_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "C64": torch.complex64,
}
FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
INTEGERS = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def is_safetensors(data: bytes) -> bool:
    return not (data[:2] == b"PK" or data[:1] == b"\x80")  # not a torch.save zip archive, not a bare pickle


def header_state(data: bytes) -> dict[str, Tensor]:
    """A safetensors checkpoint's tensors as empty ``meta`` tensors of the declared shapes and dtypes, from its
    header alone: enough for :func:`check_against` to compare keys, shapes and dtypes before any data is read."""
    from .headers import safetensors_headers

    out = {}
    for name, a in safetensors_headers(io.BytesIO(data), size=len(data), field="checkpoint").items():
        if a.dtype not in TORCH_DTYPES:
            raise InputError("checkpoint", f"tensor {name!r} has dtype {a.dtype}, which cannot be trained")
        out[name] = torch.empty(a.shape, dtype=TORCH_DTYPES[a.dtype], device="meta")
    return out


def read_state_dict(data: bytes) -> StateDict:
    """A state_dict from safetensors or ``.pt`` bytes (see the module docstring); ``InputError`` otherwise."""
    if not data:
        raise InputError("checkpoint", "the file is empty")
    if not is_safetensors(data):
        return _plain(unwrap(_load_pt(data)))
    try:
        from safetensors.torch import load

        header_state(data)  # the header parses before any tensor is made
        return _plain(unwrap(load(data)))
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001
        raise InputError(
            "checkpoint", f"not a safetensors file, a .pt state_dict or a .pt2 export (truncated?): {_first_line(e)}"
        ) from None


def _plain(sd: StateDict) -> StateDict:
    """Refuse tensors that hold no data (``meta``) or are not dense (sparse, quantized layouts)."""
    odd = [
        f"{k} ({v.device.type if v.is_meta else v.layout})"
        for k, v in sd.tensors.items()
        if v.is_meta or v.layout != torch.strided or v.is_quantized
    ]
    if odd:
        raise InputError("checkpoint", f"tensors that hold no dense data (meta, sparse or quantized): {odd[:10]}")
    return sd


def check_against(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Same keys, shapes and dtypes of the same kind as ``model``'s state_dict (floating weights: float16 to
    float64; integer buffers: integers), or an ``InputError`` naming the differences; then every floating tensor
    finite (skipped for ``meta`` tensors, which :func:`header_state` makes)."""
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
        problems.append(f"missing keys {missing[:20]}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected[:20]}")
    if shapes:
        problems.append(f"shape mismatches {shapes[:20]}")
    if problems:
        raise InputError("checkpoint", "does not match the architecture: " + "; ".join(problems))
    kinds = {k: (FLOATS, "a float") if want[k].is_floating_point() else (INTEGERS, "an integer") for k in want}
    odd = [f"{k} ({v.dtype}, expected {kinds[k][1]})" for k, v in state.items() if v.dtype not in kinds[k][0]]
    if odd:
        raise InputError("checkpoint", f"tensors of a dtype that cannot be trained: {odd[:10]}")
    bad = [k for k, v in state.items() if v.is_floating_point() and not v.is_meta and not torch.isfinite(v).all()]
    if bad:
        raise InputError("checkpoint", f"tensors with NaN or Inf: {bad[:10]}")
