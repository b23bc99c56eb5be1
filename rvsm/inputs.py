"""A batch of model inputs: one tensor, or several keyed by the model's input names.

A built-in model takes one tensor ``x``; an exported program may take several (a transformer's ``input_ids``
and ``attention_mask``). Either way the first dimension is the sample, so the training loop indexes, moves and
counts inputs without knowing which they are. :func:`call` feeds a dict to an exported module by name, in the
order its program flattens them (positional or keyword, as it was exported).
"""

from __future__ import annotations

from typing import TypeAlias

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_unflatten

Inputs: TypeAlias = Tensor | dict[str, Tensor]
NAMES_ATTR = "_rvsm_input_names"  # set on an unlifted exported module by rvsm.exported.load: its flat input order


def named(x: Inputs) -> dict[str, Tensor]:
    """Every input by name (a single tensor is ``x``)."""
    return x if isinstance(x, dict) else {"x": x}


def rows(x: Inputs) -> int:
    """The number of samples (the first dimension, equal for every input)."""
    return int(next(iter(named(x).values())).shape[0])


def select(x: Inputs, idx: Tensor | slice) -> Inputs:
    """The samples ``idx`` of every input."""
    return {k: v[idx] for k, v in x.items()} if isinstance(x, dict) else x[idx]


def to(x: Inputs, device: torch.device | str) -> Inputs:
    """Every input moved to ``device``."""
    if isinstance(x, dict):
        return {k: v.to(device, non_blocking=True) for k, v in x.items()}
    return x.to(device, non_blocking=True)


def arguments(model: nn.Module, x: Inputs) -> tuple[tuple, dict[str, Tensor]]:
    """The positional and keyword arguments that feed ``x`` to ``model``: one tensor positionally; a dict by
    the module's input names (an exported module: its program's order and args / kwargs split; any other
    module: one entry positionally, several as keywords)."""
    if not isinstance(x, dict):
        return (x,), {}
    names = getattr(model, NAMES_ATTR, None)
    spec = getattr(model, "_in_spec", None)
    if names is None or spec is None:
        return ((next(iter(x.values())),), {}) if len(x) == 1 else ((), dict(x))
    args, kwargs = tree_unflatten([x[n] for n in names], spec)
    return tuple(args), dict(kwargs)


def call(model: nn.Module, x: Inputs) -> Tensor:
    """``model`` applied to ``x`` (:func:`arguments`)."""
    args, kwargs = arguments(model, x)
    return model(*args, **kwargs)


def sample_shapes(x: Inputs) -> dict[str, tuple[int, ...]]:
    """Per-sample shape of each input (``x`` for a single tensor)."""
    return {k: tuple(int(d) for d in v.shape[1:]) for k, v in named(x).items()}


Signature: TypeAlias = dict[str, tuple[tuple[int, ...], torch.dtype]]  # input name -> per-sample shape, dtype


def signature(sample: tuple[int, ...] | Signature) -> Signature:
    """A per-sample shape (one float input, a built-in's) or a :data:`Signature` as a :data:`Signature`."""
    return sample if isinstance(sample, dict) else {"x": (tuple(sample), torch.float32)}


def empty(sig: Signature, batch: int, *, keyed: bool) -> Inputs:
    """Uninitialised inputs of ``batch`` samples (under ``FakeTensorMode``: fakes); a dict when ``keyed`` (an
    exported module), else the one tensor."""
    out = {k: torch.empty(batch, *shape, dtype=dtype) for k, (shape, dtype) in sig.items()}
    if keyed:
        return out
    if len(out) != 1:
        raise ValueError(f"a module without input names takes one input, got {sorted(out)}")
    return next(iter(out.values()))
