"""Any architecture, no user code: ``torch.export`` archives (``.pt2``) read safely, trained, written back.

What ``torch.export.load`` would run from an untrusted archive (read from torch 2.13's source,
``torch/export/pt2_archive/_package.py`` and ``torch/_export/serde/serialize.py``), and what we do:

- **pickles**: a weight or constant whose ``use_pickle`` flag is set is read by
  ``torch.load(weights_only=False)``; opaque constants by ``pickle.loads``; custom objects by the
  TorchScript unpickler; the sample inputs by ``torch.load``, falling back to ``weights_only=False``;
  the legacy (pre-2.8) layout pickles its weights. We refuse every flagged payload and every
  non-tensor constant, refuse the legacy layout, re-read the sample inputs with ``weights_only=True``
  ourselves, and load with ``TORCH_FORCE_WEIGHTS_ONLY_LOAD=1`` as a second fence.
- **eval of strings**: symbolic shape expressions (``expr_str``) go to ``sympy.sympify``, which
  evaluates Python; ``guards_code`` is compiled into the unlifted module's ``_guards_fn``. Every
  expression must match a small grammar (symbol names, numbers, arithmetic, an allow-list of sympy
  functions; no attributes, no subscripts); guards code is dropped (we check the batch dimension
  ourselves).
- **graph targets**: a node's target string is resolved by ``getattr`` from ``torch``, ``operator``
  or ``math`` (``torch.os.system`` resolves) and called when the module runs. Targets must be ATen
  operators (less a deny-list that touches files) or a few ``operator`` arithmetic functions; node
  metadata (stack traces, module stacks, resolved by the same ``getattr`` walk) is dropped.
- **the zip itself**: names, sizes and duplicates are checked with :mod:`zipfile`, and the archive
  that ``torch.export.load`` reads is one we rebuild from the checked bytes, so no second reading of
  a crafted zip can differ from ours.

The unlifted module keeps the user's parameter names. ``torch.export`` graphs bake train/eval
behaviour into ``batch_norm``/``dropout`` arguments; :func:`set_training` rewrites them, and the
module's ``train()``/``eval()`` do so, so an ordinary training loop works unchanged.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import tokenize
import types
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor, nn

from .errors import InputError

FIELD = "checkpoint"
ROOT = "archive/"
FIXED_FILES = {
    "archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id",
    "models/model.json", "data/weights/model_weights_config.json", "data/constants/model_constants_config.json",
    "data/sample_inputs/model.pt",
}  # fmt: skip
PAYLOAD_FILE = re.compile(r"data/(weights/weight|constants/tensor)_\d+")
MAX_FILES = 100_000
# ATen operators that read or write files, or that we never expect in a model's forward
DENIED_ATEN = {"from_file", "_nested_tensor_from_mask", "save", "load"}
OPERATOR_TARGETS = {
    f"_operator.{n}"
    for n in ("getitem", "add", "sub", "mul", "floordiv", "truediv", "mod", "neg", "pow", "eq", "ne", "lt", "le",
              "gt", "ge", "and_", "or_", "not_", "abs")
}  # fmt: skip
SYM_TARGETS = {f"torch.{n}" for n in ("sym_int", "sym_float", "sym_max", "sym_min", "sym_not", "sym_ite", "sym_sqrt")}
ATEN_TARGET = re.compile(r"torch\.ops\.aten\.([A-Za-z0-9_]+)\.([A-Za-z0-9_]+)")
SYMPY_NAMES = {
    "Symbol", "Integer", "Rational", "Float", "Add", "Mul", "Pow", "Max", "Min", "Abs", "Eq", "Ne", "Lt", "Le", "Gt",
    "Ge", "And", "Or", "Not", "oo", "zoo", "nan", "True", "False", "integer", "positive", "nonnegative", "real",
    "finite", "FloorDiv", "ModularIndexing", "Where", "PythonMod", "Mod", "CleanDiv", "CeilToInt", "FloorToInt",
    "CeilDiv", "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv", "IntTrueDiv", "TruncToFloat",
    "TruncToInt", "RoundToInt", "RoundDecimal", "ToFloat", "Identity", "OpaqueUnaryFn_sqrt", "floor", "ceiling",
    "BitwiseFn_bitwise_and", "BitwiseFn_bitwise_or", "IsNonOverlappingAndDenseIndicator",
}  # fmt: skip
SYMBOL_NAME = re.compile(r"[a-z]{1,3}\d{1,9}")
SYMPY_OPS = {"+", "-", "*", "/", "//", "%", "**", "(", ")", ",", "=", "<", ">", "<=", ">=", "==", "!=", "&", "|", "~"}
BN_TARGETS = {"batch_norm", "_native_batch_norm_legit", "native_batch_norm", "cudnn_batch_norm"}
DROPOUT_TARGETS = {"dropout", "feature_dropout", "alpha_dropout", "feature_alpha_dropout", "native_dropout"}
WEIGHT_CONSUMERS = {"conv1d", "conv2d", "conv3d", "convolution", "conv_transpose1d", "conv_transpose2d",
                    "conv_transpose3d", "linear", "matmul", "mm", "bmm", "addmm", "einsum"}  # fmt: skip


def is_pt2(data: bytes) -> bool:
    """Whether ``data`` looks like a ``torch.export`` archive (a zip holding ``*/models/*.json``)."""
    if data[:2] != b"PK":
        return False
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            return any("/models/" in n and n.endswith(".json") for n in z.namelist())
    except zipfile.BadZipFile:
        return False


# ----------------------------------------------------------------------------- checking
def check_expression(expr: str) -> None:
    """``expr`` is a plain symbolic expression (what sympify may see), or ``InputError``."""
    if len(expr) > 10_000:
        raise InputError(FIELD, "refused: a symbolic shape expression longer than 10000 characters")
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(expr).readline))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        raise InputError(FIELD, f"refused: a symbolic shape expression that does not parse: {expr[:80]!r}") from None
    for tok in tokens:
        ok = (
            tok.type in (tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER)
            or (tok.type == tokenize.NAME and (tok.string in SYMPY_NAMES or SYMBOL_NAME.fullmatch(tok.string)))
            or (tok.type == tokenize.NUMBER and re.fullmatch(r"[0-9.eE+-]+", tok.string))
            or (tok.type == tokenize.STRING and re.fullmatch(r"'[a-z]{1,3}\d{1,9}'", tok.string))
            or (tok.type == tokenize.OP and tok.string in SYMPY_OPS)
        )
        if not ok:
            raise InputError(
                FIELD, f"refused: the symbolic shape expression {expr[:80]!r} holds {tok.string!r}, which is not "
                "a symbol, a number or arithmetic (it would be evaluated)",
            )  # fmt: skip


def check_target(target: str) -> None:
    m = ATEN_TARGET.fullmatch(target)
    if m and m.group(1) not in DENIED_ATEN:
        return
    if target in OPERATOR_TARGETS or target in SYM_TARGETS:
        return
    raise InputError(FIELD, f"refused: the graph calls {target[:100]!r}; only ATen operators are accepted")


def _walk(obj: object) -> Iterator[tuple[str, object]]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield k, v
            yield from _walk(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk(v)


def sanitize_program(program: dict) -> dict:
    """Check the serialized program (``models/model.json``) and return it without what could run code."""
    gm = program.get("graph_module")
    if not isinstance(gm, dict) or not isinstance(gm.get("graph"), dict):
        raise InputError(FIELD, "not a torch.export archive: models/model.json has no graph")
    for key, value in _walk(program):
        if key == "expr_str":
            if not isinstance(value, str):
                raise InputError(FIELD, "refused: a symbolic expression that is not a string")
            check_expression(value)
        elif key == "target":
            if not isinstance(value, str):
                raise InputError(FIELD, "refused: a graph node whose target is not a string")
            check_target(value)
        elif key in ("as_graph", "as_custom_obj", "as_operator"):
            raise InputError(FIELD, f"refused: the graph uses {key[3:]} arguments (control flow or custom objects)")
    for name in program.get("range_constraints", {}) or {}:
        check_expression(str(name))
    if gm["graph"].get("custom_obj_values"):
        raise InputError(FIELD, "refused: the program holds custom (TorchBind) objects")
    clean = json.loads(json.dumps(program))
    clean["guards_code"] = []
    for node in clean["graph_module"]["graph"].get("nodes", []):
        node["metadata"] = {}
    clean["graph_module"]["metadata"] = {}
    return clean


def _check_payloads(config: dict, what: str) -> None:
    for name, meta in (config.get("config") or {}).items():
        if not isinstance(meta, dict) or meta.get("use_pickle") is not False:
            raise InputError(FIELD, f"refused: {what} {name!r} is stored as a pickle (only raw tensors are read)")
        path = str(meta.get("path_name", ""))
        if not re.fullmatch(r"(weight|tensor)_\d+", path):
            raise InputError(FIELD, f"refused: {what} {name!r} is a {path.split('_')[0] or 'non-tensor'} object")


def _read_members(data: bytes, max_bytes: int) -> dict[str, bytes]:
    """The archive's files under ``archive/``, checked: known names, no duplicates, sizes under ``max_bytes``."""
    try:
        z = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as e:
        raise InputError(FIELD, f"not a readable .pt2 archive (truncated or corrupt?): {e}") from None
    with z:
        infos = z.infolist()
        names = [i.filename for i in infos]
        if len(infos) > MAX_FILES or len(set(names)) != len(names):
            raise InputError(FIELD, "refused: the archive has duplicate entries or too many files")
        if sum(i.file_size for i in infos) > max_bytes:
            raise InputError(FIELD, f"refused: the archive unpacks to more than {max_bytes} bytes")
        root = names[0].split("/", 1)[0] + "/" if names else ROOT
        out = {}
        for i in infos:
            rel = i.filename.removeprefix(root)
            if not i.filename.startswith(root) or not (rel in FIXED_FILES or PAYLOAD_FILE.fullmatch(rel)):
                raise InputError(FIELD, f"refused: unexpected file {i.filename[:100]!r} in the archive "
                                        "(only one exported program with tensor weights is accepted)")  # fmt: skip
            try:
                out[rel] = z.read(i)
            except (zipfile.BadZipFile, OSError, NotImplementedError) as e:
                raise InputError(FIELD, f"not a readable .pt2 archive: {i.filename}: {e}") from None
    for need in ("models/model.json", "data/weights/model_weights_config.json", "data/sample_inputs/model.pt"):
        if need not in out:
            raise InputError(FIELD, f"not a torch.export archive of this torch version: no {need} "
                                    "(save it with torch.export.save on torch >= 2.8)")  # fmt: skip
    return out


def _json(members: dict[str, bytes], name: str) -> dict:
    try:
        obj = json.loads(members[name])
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(FIELD, f"not a readable .pt2 archive: {name} is not JSON ({e})") from None
    if not isinstance(obj, dict):
        raise InputError(FIELD, f"not a readable .pt2 archive: {name} is not a JSON object")
    return obj


def sanitize_archive(data: bytes, *, max_bytes: int) -> bytes:
    """A rebuilt archive holding only the checked parts of ``data`` (see the module docstring)."""
    members = _read_members(data, max_bytes)
    program = sanitize_program(_json(members, "models/model.json"))
    _check_payloads(_json(members, "data/weights/model_weights_config.json"), "weight")
    constants = members.get("data/constants/model_constants_config.json", b'{"config": {}}')
    _check_payloads(_json({"c": constants}, "c"), "constant")
    try:
        sample = torch.load(io.BytesIO(members["data/sample_inputs/model.pt"]), weights_only=True)
    except Exception as e:
        raise InputError(FIELD, f"refused: the sample inputs are not plain tensors ({type(e).__name__})") from None
    sample_bytes = io.BytesIO()
    torch.save(sample, sample_bytes)
    members["models/model.json"] = json.dumps(program).encode()
    members["data/sample_inputs/model.pt"] = sample_bytes.getvalue()
    members["data/constants/model_constants_config.json"] = constants
    from torch.export.pt2_archive._package import PT2ArchiveWriter

    out = io.BytesIO()
    with PT2ArchiveWriter(out) as writer:  # torch's own writer: the layout its reader expects
        for rel, blob in members.items():
            if not rel.startswith(".data/"):
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
    input_shape: tuple[int, ...]  # per sample (the batch dimension left out)
    output_shape: tuple[int, ...]  # per sample


def _user_io(ep: torch.export.ExportedProgram) -> tuple[list, list]:
    from torch.export.graph_signature import InputKind, OutputKind

    sig = ep.graph_signature
    ins = [s.arg.name for s in sig.input_specs if s.kind == InputKind.USER_INPUT]
    outs = [s.arg.name for s in sig.output_specs if s.kind == OutputKind.USER_OUTPUT]
    nodes = {n.name: n for n in ep.graph.nodes}
    return [nodes[n].meta.get("val") for n in ins], [nodes[n].meta.get("val") if n in nodes else None for n in outs]


def _shape(val: object, what: str) -> tuple[int, ...]:
    if not isinstance(val, Tensor):
        raise InputError(FIELD, f"the exported model's {what} must be one tensor")
    dims = list(val.shape)
    if not dims or isinstance(dims[0], int):
        raise InputError(
            FIELD, f"the exported model has a fixed batch size ({dims[0] if dims else 'none'}); export it with a "
            "dynamic batch dimension: torch.export.export(model, (x,), "
            "dynamic_shapes={'x': {0: torch.export.Dim('batch')}})",
        )  # fmt: skip
    rest = dims[1:]
    if not all(isinstance(d, int) for d in rest):
        raise InputError(FIELD, f"the exported model's {what} may be dynamic only in the batch dimension")
    return tuple(int(d) for d in rest)


def load(data: bytes, *, max_bytes: int = 2**31) -> Exported:
    """Read a ``.pt2`` safely (module docstring) and unlift it to a trainable module."""
    clean = sanitize_archive(data, max_bytes=max_bytes)
    try:
        with _weights_only_loads():
            ep = torch.export.load(io.BytesIO(clean))
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure of torch's reader is a bad file
        msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise InputError(FIELD, f"torch.export.load could not read the archive: {msg}") from None
    ins, outs = _user_io(ep)
    if len(ins) != 1 or len(outs) != 1:
        raise InputError(FIELD, f"the exported model must take one tensor and return one (it takes {len(ins)} "
                                f"inputs and returns {len(outs)} outputs)")  # fmt: skip
    in_shape, out_shape = _shape(ins[0], "input"), _shape(outs[0], "output")
    module = ep.module(check_guards=False)
    check_module(module)
    _make_switchable(module)
    return Exported(ep, module, in_shape, out_shape)


def _allowed_callables() -> set[object]:
    import operator

    import torch.fx._pytree as fx_pytree
    import torch.utils._pytree as pytree

    names = [t.split(".", 1)[1] for t in OPERATOR_TARGETS]
    return {getattr(operator, n) for n in names} | {getattr(torch, t.split(".")[1]) for t in SYM_TARGETS} | {
        fx_pytree.tree_flatten_spec, pytree.tree_unflatten}  # the unlifted module's input / output plumbing


def check_module(module: nn.Module) -> None:
    """Every call in the unlifted graph is an allowed operator (checked again after loading)."""
    allowed = _allowed_callables()
    for node in module.graph.nodes:  # type: ignore[union-attr]
        if node.op in ("call_module", "call_method"):
            raise InputError(FIELD, f"refused: the unlifted graph has a {node.op} node ({node.target})")
        if node.op != "call_function":
            continue
        t = node.target
        if isinstance(t, torch._ops.OpOverload):
            if t.namespace != "aten" or t._schema.name.split("::")[-1] in DENIED_ATEN:
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
    """Names of the parameters used as the weight of a convolution, linear or matmul node (never biases
    or norm parameters): what RVSM sparsifies by default in an exported graph."""
    names: list[str] = []
    params = dict(module.named_parameters())
    for node in module.graph.nodes:  # type: ignore[union-attr]
        if _op_name(node) not in WEIGHT_CONSUMERS:
            continue
        for arg in node.args[:3]:
            if isinstance(arg, torch.fx.Node) and arg.op == "get_attr" and arg.target in params:
                if params[str(arg.target)].dim() >= 2 and arg.target not in names:
                    names.append(str(arg.target))
    return names


def save(exported: Exported, state: dict[str, Tensor]) -> bytes:
    """The program with ``state`` (the trained, sparse weights and buffers) as a ``.pt2`` archive, in eval
    mode (batch norm uses its running statistics, dropout is off) whatever mode it was exported in."""
    ep = exported.program
    set_training(ep.graph_module, False)
    with torch.no_grad():
        for name, t in ep.state_dict.items():
            if name in state:
                t.copy_(state[name].to(t.device, t.dtype))
    buf = io.BytesIO()
    torch.export.save(ep, buf)
    return buf.getvalue()
