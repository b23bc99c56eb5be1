"""Any architecture, no user code: ``torch.export`` archives (``.pt2``) read safely, trained, written back.

An uploaded archive passes three fences (``docs/security.md``):

1. :mod:`rvsm.archive` reads it as data only, under caps, and checks every name, expression and operator
   that could reach the Python source torch.fx generates; :func:`load` gives torch only the archive
   :func:`rebuild` writes from those checked parts (no sample inputs, guard code or node metadata; weights
   loaded with ``TORCH_FORCE_WEIGHTS_ONLY_LOAD=1``), then checks the unlifted graph again (:func:`check_module`).
2. :func:`fake_cost` runs the forward under ``FakeTensorMode`` (every tensor and device faked, so nothing is
   computed or allocated) and counts what a real pass would cost: the elements every operator allocates, the
   elements it reads and writes (an ``expand`` then a reduction is counted at its expanded size), and the
   floating-point operations of matmul-like operators.
3. All of this runs in a confined child process (:mod:`rvsm.sandbox`), never in the API's or the worker's.

The unlifted module keeps the user's parameter names. ``torch.export`` graphs bake train/eval
behaviour into ``batch_norm``/``dropout`` arguments; :func:`set_training` rewrites them, and the
module's ``train()``/``eval()`` do so, so an ordinary training loop works unchanged.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import threading
import types
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import cast

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves, tree_unflatten

from . import archive
from .archive import ALLOWED_ATEN, FIELD, OUT_OVERLOAD, ArchiveLimits, Members
from .errors import InputError
from .inputs import NAMES_ATTR, Signature, arguments, empty, signature

BN_TARGETS = {"batch_norm", "_native_batch_norm_legit", "native_batch_norm", "cudnn_batch_norm"}
DROPOUT_TARGETS = {"dropout", "feature_dropout", "alpha_dropout", "feature_alpha_dropout", "native_dropout"}
WEIGHT_CONSUMERS = {
    "conv1d",
    "conv2d",
    "conv3d",
    "convolution",
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
    "linear",
    "matmul",
    "mm",
    "bmm",
    "addmm",
    "einsum",
}
RECURRENT = {"lstm", "gru", "rnn_tanh", "rnn_relu"}  # their weights come as one list argument
IN_PLACE = {
    "add_",
    "clamp_",
    "copy_",
    "detach_",
    "div_",
    "dropout_",
    "fill_",
    "hardtanh_",
    "leaky_relu_",
    "masked_fill_",
    "mul_",
    "relu_",
    "silu_",
    "sub_",
    "tanh_",
    "zero_",
}
MAX_INPUTS = 16  # tensors an exported model may take
_load_lock = threading.Lock()  # torch's deserialiser keeps a process-wide global while it reads


def is_pt2(data: bytes) -> bool:
    """Whether ``data`` looks like a ``torch.export`` archive (a zip whose directory names ``*/models/*.json``);
    only the zip's directory is read, and only when it declares a sane number of entries."""
    if data[:2] != b"PK":
        return False
    try:
        if archive.directory_entries(data) > 100_000:
            return True  # a zip of that many members is refused as an archive, with its reason
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            return any("/models/" in n and n.endswith(".json") for n in z.namelist())
    except (zipfile.BadZipFile, InputError, ValueError, OSError, EOFError):
        return False


def rebuild(members: Members) -> bytes:
    """A fresh archive, written by torch's own writer, from the checked parts only (empty sample inputs)."""
    from torch.export.pt2_archive._package import PT2ArchiveWriter

    sample = io.BytesIO()
    torch.save(((), {}), sample)
    tables = {archive.PROGRAM: members.program, archive.WEIGHTS: members.weights, archive.CONSTANTS: members.constants}
    files = {name: json.dumps(obj).encode() for name, obj in tables.items()} | {
        archive.SAMPLE_INPUTS: sample.getvalue(),
        "archive_format": b"pt2",
        "archive_version": b"0",
        "byteorder": b"little",
        **members.payloads,
    }
    out = io.BytesIO()
    with PT2ArchiveWriter(out) as writer:
        for rel, blob in files.items():
            writer.write_bytes(rel, blob)
    return out.getvalue()


@contextlib.contextmanager
def _weights_only_loads() -> Iterator[None]:
    old = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = old


# ----------------------------------------------------------------------------- loading
@dataclass
class Exported:
    """A checked exported program and its trainable module (user parameter names kept)."""

    program: torch.export.ExportedProgram
    module: nn.Module
    inputs: Signature  # each input's name, per-sample shape (the batch dimension left out) and dtype
    output_shape: tuple[int, ...]  # per sample
    tied: list[list[str]] = field(default_factory=list)  # parameters that are one tensor (tied embeddings, heads)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The first input's per-sample shape (the only one of a single-input model)."""
        return next(iter(self.inputs.values()))[0]


def _user_io(ep: torch.export.ExportedProgram) -> tuple[dict[str, object], list]:
    from torch.export.graph_signature import InputKind, OutputKind

    sig = ep.graph_signature
    ins = [s.arg.name for s in sig.input_specs if s.kind == InputKind.USER_INPUT]
    outs = [s.arg.name for s in sig.output_specs if s.kind == OutputKind.USER_OUTPUT]
    nodes = {n.name: n for n in ep.graph.nodes}
    return {n: nodes[n].meta.get("val") for n in ins}, [nodes[n].meta.get("val") if n in nodes else None for n in outs]


def _shape(val: object, what: str) -> tuple[int, ...]:
    if not isinstance(val, Tensor):
        raise InputError(FIELD, f"the exported model's {what} must be a tensor")
    dims = list(val.shape)
    if not dims or isinstance(dims[0], int):
        raise InputError(
            FIELD,
            f"the exported model's {what} has a fixed batch size ({dims[0] if dims else 'none'}); export it "
            "with a dynamic batch dimension: torch.export.export(model, (x,), "
            "dynamic_shapes={'x': {0: torch.export.Dim('batch')}})",
        )
    rest = dims[1:]
    if not all(isinstance(d, int) for d in rest):
        raise InputError(FIELD, f"the exported model's {what} may be dynamic only in the batch dimension")
    return tuple(int(d) for d in rest)


def _signature(ep: torch.export.ExportedProgram) -> tuple[Signature, tuple[int, ...]]:
    """The program's inputs (name, per-sample shape, dtype; several allowed, tensors only) and its one output's
    per-sample shape."""
    ins, outs = _user_io(ep)
    if not 1 <= len(ins) <= MAX_INPUTS or len(outs) != 1:
        raise InputError(
            FIELD,
            f"the exported model must take 1 to {MAX_INPUTS} tensors and return one (it takes "
            f"{len(ins)} inputs and returns {len(outs)} outputs)",
        )
    sig = {name: (_shape(val, f"input {name!r}"), cast(Tensor, val).dtype) for name, val in ins.items()}
    return sig, _shape(outs[0], "output")


def load(data: bytes, *, limits: ArchiveLimits = ArchiveLimits()) -> Exported:  # noqa: B008 - frozen
    """Read a ``.pt2`` safely (module docstring) and unlift it to a trainable module."""
    members = archive.read_members(data, limits)
    archive.check_program(members.program, limits)
    clean = rebuild(members)
    try:
        with _load_lock, _weights_only_loads():
            ep = torch.export.load(io.BytesIO(clean))
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure of torch's reader is a bad file
        msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise InputError(FIELD, f"torch.export.load could not read the archive: {msg}") from None
    sig, out_shape = _signature(ep)
    try:  # sample inputs of the declared shapes: the archive's own were never read, and a saved copy needs them
        zeros = [torch.zeros(2, *shape, dtype=dtype) for shape, dtype in sig.values()]
        ep.example_inputs = tree_unflatten(zeros, ep.call_spec.in_spec)
    except Exception as e:  # noqa: BLE001 - the declared inputs do not fit the program's own checks
        raise InputError(FIELD, f"the exported model's inputs do not fit its own signature: {str(e)[:200]}") from None
    module = ep.module(check_guards=False)
    check_module(module)
    _make_switchable(module)
    setattr(module, NAMES_ATTR, list(sig))
    tied = tied_groups(ep.state_dict)
    tie(module, tied)
    return Exported(ep, module, sig, out_shape, tied)


def tied_groups(state: dict[str, Tensor]) -> list[list[str]]:
    """Names of the tensors that are one tensor (same storage, offset, shape and strides): tied weights, which
    ``torch.export.save`` stores once."""
    groups: dict[tuple, list[str]] = {}
    for name, t in state.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        groups.setdefault(key, []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def tie(module: nn.Module, groups: list[list[str]]) -> None:
    """Make each group of parameter names one ``Parameter`` of ``module`` again (the unlifted module gets a
    copy per name): trained once, pruned with one mask, and ``named_parameters`` lists it once."""
    params = dict(module.named_parameters(remove_duplicate=False))
    for first, *rest in groups:
        if not all(n in params for n in (first, *rest)):
            continue  # buffers or constants that share storage: read-only in training, left as they are
        shared = params[first]
        for name in rest:
            owner, _, leaf = name.rpartition(".")
            setattr(module.get_submodule(owner), leaf, shared)


def _allowed_callables() -> set[object]:
    import operator

    import torch.fx._pytree as fx_pytree
    import torch.utils._pytree as pytree

    names = [t.split(".", 1)[1] for t in archive.OPERATOR_TARGETS]
    syms = {getattr(torch, t.split(".")[1]) for t in archive.SYM_TARGETS}
    return (
        {getattr(operator, n) for n in names} | syms | {fx_pytree.tree_flatten_spec, pytree.tree_unflatten}
    )  # the unlifted module's input / output plumbing


def check_module(module: nn.Module) -> None:
    """Every call in the unlifted graph is an allowed operator, by its schema this time: ATen, on the allow-list,
    no ``out=`` form, and writing into an argument only if it is one of the in-place operators we allow."""
    allowed = _allowed_callables()
    for node in module.graph.nodes:  # type: ignore[union-attr]
        if node.op in ("call_module", "call_method"):
            raise InputError(FIELD, f"refused: the unlifted graph has a {node.op} node ({node.target})")
        if node.op != "call_function":
            continue
        t = node.target
        if isinstance(t, torch._ops.OpOverload):
            name = t._schema.name.split("::")[-1]
            writes = any(a.alias_info is not None and a.alias_info.is_write for a in t._schema.arguments)
            if (
                t.namespace != "aten"
                or name not in ALLOWED_ATEN
                or OUT_OVERLOAD.fullmatch(t._overloadname)
                or (writes and name not in IN_PLACE)
                or any(a.is_out for a in t._schema.arguments)
            ):
                raise InputError(FIELD, f"refused: the graph calls {t}")
        elif t not in allowed:
            raise InputError(FIELD, f"refused: the graph calls {t!r}")


# ----------------------------------------------------------------------------- train / eval
def _op_name(node: torch.fx.Node) -> str | None:
    t = node.target
    if node.op == "call_function" and isinstance(t, torch._ops.OpOverload):
        return t._schema.name.split("::")[-1]
    return None


def set_training(module: nn.Module, mode: bool) -> int:
    """Rewrite the train/eval flags of ``batch_norm`` and ``dropout`` nodes; returns how many changed."""
    changed = 0
    graph = cast(torch.fx.Graph, module.graph)
    for node in graph.nodes:
        name = _op_name(node)
        if name in BN_TARGETS:
            changed += _set_arg(node, 5, "training", mode)
        elif name in DROPOUT_TARGETS:
            changed += _set_arg(node, 2, "train", mode)
    if changed:
        module.recompile()  # type: ignore[operator]
    return changed


def _set_arg(node: torch.fx.Node, pos: int, kw: str, value: bool) -> int:
    if kw in node.kwargs:
        if node.kwargs[kw] == value:
            return 0
        node.update_kwarg(kw, value)
        return 1
    if len(node.args) > pos and isinstance(node.args[pos], bool):
        if node.args[pos] == value:
            return 0
        node.update_arg(pos, value)
        return 1
    return 0


def _make_switchable(module: nn.Module) -> None:
    """Give the unlifted module working ``train()`` / ``eval()`` (torch's raise NotImplementedError)."""

    def train(self: nn.Module, mode: bool = True) -> nn.Module:
        self.training = mode
        set_training(self, mode)
        return self

    def eval_(self: nn.Module) -> nn.Module:
        return train(self, False)

    module.train = types.MethodType(train, module)  # type: ignore[method-assign]
    module.eval = types.MethodType(eval_, module)  # type: ignore[method-assign]
    module.train(module.training)


def sparsifiable_parameters(module: nn.Module) -> list[str]:
    """Names of the weight matrices the graph consumes in a matmul-like operator: convolution, linear, matmul,
    bmm, einsum (attention projections included), and a recurrent cell's ``weight_ih`` / ``weight_hh``; never
    biases, norms or embeddings (an embedding is a lookup table: prune it by naming it in ``params``). What RVSM
    sparsifies by default in an exported graph."""
    params = dict(module.named_parameters(remove_duplicate=False))  # a tied parameter under each of its names
    canonical = {id(p): n for n, p in module.named_parameters()}  # and the one name training knows it by
    names: list[str] = []
    for node in module.graph.nodes:  # type: ignore[union-attr]
        op = _op_name(node)
        if op in WEIGHT_CONSUMERS:
            candidates = list(node.args[:3])
        elif op in RECURRENT:
            candidates = list(node.args[2]) if len(node.args) > 2 and isinstance(node.args[2], list | tuple) else []
        else:
            continue
        for arg in candidates:
            if isinstance(arg, torch.fx.Node) and arg.op == "get_attr" and arg.target in params:
                p = params[str(arg.target)]
                if p.dim() >= 2 and canonical[id(p)] not in names:
                    names.append(canonical[id(p)])
    return names


def save(exported: Exported, state: dict[str, Tensor]) -> bytes:
    """The program with ``state`` (the trained, sparse weights and buffers) as a ``.pt2`` archive, in eval
    mode (batch norm uses its running statistics, dropout is off) whatever mode it was exported in."""
    ep = exported.program
    set_training(ep.graph_module, False)
    with torch.no_grad():  # CPU tensors whatever device trained them: the archive loads anywhere
        for name, t in list(ep.state_dict.items()):
            new = (state[name] if name in state else t).detach().to("cpu", t.dtype).contiguous()
            ep.state_dict[name] = nn.Parameter(new, t.requires_grad) if isinstance(t, nn.Parameter) else new
        for name, c in list(ep.constants.items()):
            if isinstance(c, Tensor):
                ep.constants[name] = c.detach().to("cpu")
    buf = io.BytesIO()
    torch.export.save(ep, buf)
    return buf.getvalue()


# ----------------------------------------------------------------------------- cost, with nothing computed
@dataclass
class Cost:
    """What one forward pass of ``batch`` samples would cost (counted under ``FakeTensorMode``)."""

    output_shape: tuple[int, ...]  # per sample
    allocated: int  # elements of every tensor an operator returns (views and in-place results left out)
    traffic: int  # elements every non-view operator reads and writes (expanded views at their full size)
    flops: int  # floating-point operations of matmul-like operators (torch.utils.flop_counter)


class _CostCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.allocated = self.traffic = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        out = func(*args, **(kwargs or {}))
        schema = func._schema
        returns = sum(int(t.numel()) for t in tree_leaves(out) if isinstance(t, Tensor))
        aliases = any(r.alias_info is not None for r in schema.returns)
        writes = any(a.alias_info is not None and a.alias_info.is_write for a in schema.arguments)
        if not aliases:
            self.allocated += returns
        if writes or not aliases:
            reads = sum(int(t.numel()) for t in tree_leaves((args, kwargs)) if isinstance(t, Tensor))
            self.traffic += reads + returns
        return out


def _tensors(model: nn.Module) -> dict[str, Tensor]:
    """The module's parameters, buffers and the tensor constants its graph reads (``get_attr``); a tied tensor
    once, under its first name (``functional_call`` ties the others)."""
    seen: set[int] = set()
    out: dict[str, Tensor] = {}
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) not in seen:
            seen.add(id(t))
            out[name] = t
    graph = getattr(model, "graph", None)
    for node in graph.nodes if graph is not None else ():
        if node.op == "get_attr" and node.target not in out:
            value = _attr(model, str(node.target))
            if isinstance(value, Tensor) and id(value) not in seen:
                seen.add(id(value))
                out[str(node.target)] = value
    return out


def _attr(model: nn.Module, path: str) -> object:
    obj: object = model
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def fake_cost(model: nn.Module, sample: tuple[int, ...] | Signature, batch: int, *, training: bool = True) -> Cost:
    """One forward pass of ``batch`` samples under ``FakeTensorMode``: the model's parameters, buffers and
    constants, the inputs (``sample``: one float input's per-sample shape, or a :data:`~rvsm.inputs.Signature`)
    and every tensor the graph creates (whatever device it names) are fakes, so nothing is computed or
    allocated; the pass's :class:`Cost`. ``InputError`` if the model cannot take the inputs."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils.flop_counter import FlopCounterMode

    sig = signature(sample)
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    was_training = model.training
    model.train(training)
    counter, flops = _CostCounter(), FlopCounterMode(display=False)
    try:
        with mode:
            state = {
                k: torch.empty_strided(v.shape, v.stride(), dtype=v.dtype).requires_grad_(v.requires_grad)
                for k, v in _tensors(model).items()
            }
            x = empty(sig, batch, keyed=hasattr(model, NAMES_ATTR))
            args, kwargs = arguments(model, x)
            with flops, counter:
                out = torch.func.functional_call(model, state, args, kwargs)
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - a model that cannot take these inputs: say why
        text = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise InputError(
            "architecture", f"the model cannot run on samples of {_shown(sig)} in batches of {batch}: {text}"
        ) from None
    finally:
        model.train(was_training)
    if not isinstance(out, Tensor) or out.dim() < 1 or out.shape[0] != batch:
        raise InputError("architecture", f"the model must return one tensor of {batch} rows for {batch} samples")
    return Cost(tuple(int(d) for d in out.shape[1:]), counter.allocated, counter.traffic, int(flops.get_total_flops()))


def _shown(sig: Signature) -> str:
    if list(sig) == ["x"]:
        return f"shape {sig['x'][0]}"
    return ", ".join(f"{k} {shape} {str(dtype).removeprefix('torch.')}" for k, (shape, dtype) in sig.items())
