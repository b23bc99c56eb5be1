"""Fence 1 for uploaded ``torch.export`` archives: nothing but checked data reaches torch.

A ``.pt2`` is a zip of JSON (the serialized program, its weight and constant tables) and raw tensor bytes.
torch turns the program into Python source (``torch.fx`` code generation) and runs it, so every string that
can reach that source, and every operator the graph calls, decides what runs. This module reads the archive
with the standard library only, under caps, and passes on a rebuilt archive that holds only what it checked:

- **the zip** (:func:`read_members`): the end-of-central-directory record's entry count is capped before
  :mod:`zipfile` parses the directory; member names come from a fixed list; duplicates, encrypted members,
  compression other than stored/deflate, a member over its size cap or expanding more than ``ratio`` times,
  and a total over ``bytes`` are refused. Only the program, the two tables and the tensors they name are
  read; the sample inputs (a nested ``torch.save`` zip) and any member nothing references are never opened.
- **JSON** (:mod:`rvsm.boundedjson`): size, depth and element count capped on the text before parsing.
- **strings** (:func:`check_program`): every dict key and string value is matched against the grammar of its
  field: names (parameters, buffers, constants, nodes, inputs, outputs, module paths) are dotted identifiers;
  shape expressions are arithmetic over symbols (:func:`check_expression`); the pytree specs are re-derived;
  node metadata (stack traces, ``nn_module_stack``) and guard code are dropped unread.
- **operators**: an allow-list of ATen operators (:data:`ALLOWED_ATEN`), with argument rules: no ``out=`` or
  resizing forms, no views except those that check their bounds (no ``as_strided``, ``_reshape_alias``,
  ``set_``, storage or file operators), no uninitialised memory (``empty``); a node cap.
"""

from __future__ import annotations

import io
import json
import keyword
import re
import tokenize
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass

from .boundedjson import load_json
from .errors import InputError

FIELD = "checkpoint"
PROGRAM = "models/model.json"
WEIGHTS = "data/weights/model_weights_config.json"
CONSTANTS = "data/constants/model_constants_config.json"
SAMPLE_INPUTS = "data/sample_inputs/model.pt"
KNOWN_FILES = {
    "archive_format",
    "archive_version",
    "byteorder",
    ".data/version",
    ".data/serialization_id",
    PROGRAM,
    WEIGHTS,
    CONSTANTS,
    SAMPLE_INPUTS,
}
PAYLOAD_FILE = re.compile(r"data/(weights/weight|constants/tensor)_\d{1,7}")
ROOT = re.compile(r"[A-Za-z0-9_]{1,64}/")
NAME = re.compile(r"[A-Za-z0-9_]{1,128}(\.[A-Za-z0-9_]{1,128}){0,32}")  # a module path, parameter or node name
IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
VERSION = re.compile(r"[0-9A-Za-z.+_-]{1,64}")
SAFE_STRING = re.compile(r"[A-Za-z0-9_,.\->() ]{0,128}")  # string arguments: einsum equations, reduce modes
DEVICE_TYPES = {"cpu", "cuda", "meta"}
PATH_FIELDS = {"parameter_name", "buffer_name", "tensor_constant_name", "custom_obj_name", "fqn", "target_fqn"}
VALUE_TABLES = {"tensor_values", "sym_int_values", "sym_float_values", "sym_bool_values", "custom_obj_values"}
MAX_ARG_LIST = 256  # items of one argument, shape or stride list
DROPPED = {"metadata", "guards_code"}  # never read: stack traces, module stacks, guard source

ATEN_TARGET = re.compile(r"torch\.ops\.aten\.([A-Za-z0-9_]{1,64})\.([A-Za-z0-9_]{1,64})")
OPERATOR_TARGETS = {
    f"_operator.{n}"
    for n in (
        "getitem",
        "add",
        "sub",
        "mul",
        "floordiv",
        "truediv",
        "mod",
        "neg",
        "pow",
        "eq",
        "ne",
        "lt",
        "le",
        "gt",
        "ge",
        "and_",
        "or_",
        "not_",
        "abs",
    )
}
SYM_TARGETS = {f"torch.{n}" for n in ("sym_int", "sym_float", "sym_max", "sym_min", "sym_not", "sym_ite", "sym_sqrt")}
# ATen operators a model's forward may call. Views here all check their bounds against the storage; factory
# operators all initialise what they allocate; none reads or writes files, storages or other tensors' memory.
ALLOWED_ATEN = frozenset(
    """
__and__ __invert__ __or__ __xor__ abs add add_ addcmul addmm alias all amax amin any arange argmax argmin avg_pool1d
avg_pool2d avg_pool3d adaptive_avg_pool1d adaptive_avg_pool2d adaptive_avg_pool3d adaptive_max_pool1d
adaptive_max_pool2d baddbmm batch_norm bernoulli bitwise_and bitwise_not bitwise_or bitwise_xor bmm cat ceil chunk
clamp clamp_ clamp_max clamp_min clone constant_pad_nd contiguous conv1d conv2d conv3d conv_transpose1d
conv_transpose2d conv_transpose3d convolution copy copy_ cos cosh cumsum detach detach_ diagonal div div_ dropout
dropout_ einsum elu embedding eq erf exp expand expand_as expm1 feature_dropout fill fill_ flatten flip floor
floor_divide fmod full full_like gather ge gelu group_norm gru gt hardsigmoid hardswish hardtanh hardtanh_ index
index_select instance_norm layer_norm le leaky_relu leaky_relu_ lift_fresh_copy linalg_vector_norm linear log log1p
log_softmax logical_and logical_not logical_or lstm lt masked_fill masked_fill_ matmul max max_pool1d max_pool2d
max_pool3d max_pool2d_with_indices maximum mean min minimum mish mm mul mul_ narrow native_batch_norm native_dropout
native_group_norm native_layer_norm ne neg new_full new_ones new_zeros norm ones ones_like permute pixel_shuffle pow
prod reciprocal relu relu_ remainder repeat reshape rnn_relu rnn_tanh round rsqrt rsub scalar_tensor
scaled_dot_product_attention select sigmoid sign silu silu_ sin sinh slice softmax softplus split split_with_sizes
sqrt square squeeze std sub sub_ sum sym_numel sym_size t tanh tanh_ transpose tril triu trunc type_as unbind
unflatten unsqueeze upsample_bilinear2d upsample_nearest2d var view view_as where zero_ zeros zeros_like
_assert_scalar _assert_tensor_metadata _log_softmax _native_batch_norm_legit _native_batch_norm_legit_functional
_native_batch_norm_legit_no_training _softmax _to_copy _unsafe_view sym_constrain_range_for_size to
""".split()
)
OUT_OVERLOAD = re.compile(r"(.*_)?out(_.*)?|.*grad_input.*")  # out= and resizing forms write into a given tensor
SYMPY_NAMES = {
    "Symbol",
    "Integer",
    "Rational",
    "Float",
    "Add",
    "Mul",
    "Pow",
    "Max",
    "Min",
    "Abs",
    "Eq",
    "Ne",
    "Lt",
    "Le",
    "Gt",
    "Ge",
    "And",
    "Or",
    "Not",
    "oo",
    "zoo",
    "nan",
    "True",
    "False",
    "integer",
    "positive",
    "nonnegative",
    "real",
    "finite",
    "FloorDiv",
    "ModularIndexing",
    "Where",
    "PythonMod",
    "Mod",
    "CleanDiv",
    "CeilToInt",
    "FloorToInt",
    "CeilDiv",
    "LShift",
    "RShift",
    "PowByNatural",
    "FloatPow",
    "FloatTrueDiv",
    "IntTrueDiv",
    "TruncToFloat",
    "TruncToInt",
    "RoundToInt",
    "RoundDecimal",
    "ToFloat",
    "Identity",
    "OpaqueUnaryFn_sqrt",
    "floor",
    "ceiling",
    "BitwiseFn_bitwise_and",
    "BitwiseFn_bitwise_or",
    "IsNonOverlappingAndDenseIndicator",
}
SYMBOL_NAME = re.compile(r"[a-z]{1,3}\d{1,9}")
SYMPY_OPS = {"+", "-", "*", "/", "//", "%", "**", "(", ")", ",", "=", "<", ">", "<=", ">=", "==", "!=", "&", "|", "~"}
# serialized ScalarType -> bytes per element (torch._export.serde.schema.ScalarType)
ITEMSIZE = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 2, 7: 4, 8: 8, 12: 1, 13: 2, 28: 2, 34: 4, 35: 8}
TREESPEC_TYPES = {None, "builtins.tuple", "builtins.list", "builtins.dict"}


@dataclass(frozen=True, kw_only=True)
class ArchiveLimits:
    """Caps on reading one archive: ``bytes`` uncompressed in all, ``member_bytes`` for one member,
    ``members`` in the zip's directory, ``ratio`` (uncompressed / compressed size of a member over 1 MiB),
    ``json_bytes`` / ``json_depth`` / ``json_elements`` for each JSON member, ``nodes`` in the graph."""

    bytes: int = 2**31
    member_bytes: int = 2**31
    members: int = 10_000
    ratio: int = 100
    json_bytes: int = 64 * 2**20
    json_depth: int = 48
    json_elements: int = 1_000_000
    nodes: int = 5_000


def _refuse(rule: str) -> InputError:
    return InputError(FIELD, f"refused: {rule}")


# ----------------------------------------------------------------------------- the zip
def directory_entries(data: bytes) -> int:
    """The entry count the zip's end records declare (the larger of the classic and the zip64 one), read
    before :mod:`zipfile` builds an object per entry."""
    tail_start = max(0, len(data) - 22 - 65535)
    i = data.rfind(b"PK\x05\x06", tail_start)
    if i < 0 or len(data) - i < 22:
        raise InputError(FIELD, "not a readable .pt2 archive (no zip directory; truncated or corrupt?)")
    entries = int.from_bytes(data[i + 10 : i + 12], "little")
    loc = data.rfind(b"PK\x06\x07", max(0, i - 20), i)
    if loc >= 0:
        off = int.from_bytes(data[loc + 8 : loc + 16], "little")
        if data[off : off + 4] == b"PK\x06\x06" and off + 40 <= len(data):
            entries = max(entries, int.from_bytes(data[off + 32 : off + 40], "little"))
    return entries


def _infos(z: zipfile.ZipFile, limits: ArchiveLimits) -> dict[str, zipfile.ZipInfo]:
    """The members by name relative to the archive's root, every member's header checked."""
    infos = z.infolist()
    root = ROOT.match(infos[0].filename) if infos else None
    if root is None:
        raise InputError(FIELD, "not a torch.export archive: no archive root folder")
    out: dict[str, zipfile.ZipInfo] = {}
    total = 0
    for info in infos:
        rel = info.filename.removeprefix(root.group())
        if not info.filename.startswith(root.group()) or not (rel in KNOWN_FILES or PAYLOAD_FILE.fullmatch(rel)):
            raise _refuse(
                f"unexpected file {info.filename[:100]!r} in the archive (only one exported program with "
                "tensor weights is accepted)"
            )
        if rel in out:
            raise _refuse(f"the archive holds {info.filename[:100]!r} twice")
        if info.flag_bits & 0x1:
            raise _refuse(f"{rel} is encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise _refuse(f"{rel} uses a compression other than stored or deflate")
        if info.file_size > limits.member_bytes:
            raise _refuse(f"{rel} unpacks to {info.file_size} bytes, over the cap of {limits.member_bytes}")
        if info.file_size > 2**20 and info.file_size > limits.ratio * max(info.compress_size, 1):
            raise _refuse(
                f"{rel} expands {info.file_size // max(info.compress_size, 1)} times, over the cap of "
                f"{limits.ratio} (a compression bomb?)"
            )
        total += info.file_size
        out[rel] = info
    if total > limits.bytes:
        raise _refuse(f"the archive unpacks to {total} bytes, over the cap of {limits.bytes}")
    return out


def _read(z: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    try:
        with z.open(info) as f:
            blob = f.read(info.file_size + 1)
    except (zipfile.BadZipFile, OSError, NotImplementedError, RuntimeError, EOFError, ValueError) as e:
        raise InputError(FIELD, f"not a readable .pt2 archive: {info.filename[:100]}: {e}") from None
    if len(blob) != info.file_size:
        raise _refuse(f"{info.filename[:100]} is not the size its header says")
    return blob


def _json(blob: bytes, what: str, limits: ArchiveLimits) -> dict:
    obj = load_json(
        blob,
        field=FIELD,
        what=what,
        max_bytes=limits.json_bytes,
        max_depth=limits.json_depth,
        max_elements=limits.json_elements,
    )
    if not isinstance(obj, dict):
        raise InputError(FIELD, f"not a readable .pt2 archive: {what} is not a JSON object")
    return obj


@dataclass
class Members:
    """What was read: the program and tables (checked JSON), and the tensor files they name (raw bytes)."""

    program: dict
    weights: dict
    constants: dict
    payloads: dict[str, bytes]


def read_members(data: bytes, limits: ArchiveLimits) -> Members:
    """The archive's program, tables and referenced tensors (module docstring); nothing else is opened."""
    if directory_entries(data) > limits.members:
        raise _refuse(f"the archive declares {directory_entries(data)} files, over the cap of {limits.members}")
    try:
        z = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise InputError(FIELD, f"not a readable .pt2 archive (truncated or corrupt?): {e}") from None
    with z:
        infos = _infos(z, limits)
        for need in (PROGRAM, WEIGHTS):
            if need not in infos:
                raise InputError(
                    FIELD,
                    f"not a torch.export archive of this torch version: no {need} "
                    "(save it with torch.export.save on torch >= 2.8)",
                )
        tables = {m: _json(_read(z, infos[m]), m, limits) for m in (PROGRAM, WEIGHTS, CONSTANTS) if m in infos}
        weights, constants = tables[WEIGHTS], tables.get(CONSTANTS, {"config": {}})
        wanted = [f"data/weights/{p}" for p in _payload_paths(weights, "weight")]
        wanted += [f"data/constants/{p}" for p in _payload_paths(constants, "constant")]
        missing = [w for w in wanted if w not in infos]
        if missing:
            raise InputError(FIELD, f"not a readable .pt2 archive: {missing[0]} is named but missing")
        payloads = {w: _read(z, infos[w]) for w in wanted}
    for table, folder in ((weights, "data/weights/"), (constants, "data/constants/")):
        for name, meta in table["config"].items():
            check_tensor_meta(name, meta.get("tensor_meta"), len(payloads[folder + meta["path_name"]]))
    return Members(tables[PROGRAM], weights, constants, payloads)


def _ints(seq: object, what: str) -> list[int]:
    if not isinstance(seq, list) or len(seq) > 16:
        raise _refuse(f"{what} is not a short list")
    out = [d.get("as_int") if isinstance(d, dict) else None for d in seq]
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**40 for v in out):
        raise _refuse(f"{what} holds a value that is not a non-negative integer")
    return out  # type: ignore[return-value]


def check_tensor_meta(name: str, meta: object, nbytes: int) -> None:
    """A stored tensor's dtype, layout, sizes and strides: a plain strided tensor whose every element lies
    inside its ``nbytes`` of payload (torch views the payload with ``as_strided``)."""
    if not isinstance(meta, dict) or meta.get("layout") != 7 or meta.get("dtype") not in ITEMSIZE:
        raise _refuse(f"the stored tensor {name!r} is not a plain strided tensor of a numeric dtype")
    sizes = _ints(meta.get("sizes"), f"the sizes of {name!r}")
    strides = _ints(meta.get("strides"), f"the strides of {name!r}")
    offset = _ints([meta.get("storage_offset")], f"the storage offset of {name!r}")[0]
    if len(sizes) != len(strides):
        raise _refuse(f"the stored tensor {name!r} has {len(sizes)} sizes and {len(strides)} strides")
    extent = 0 if 0 in sizes else offset + sum((n - 1) * st for n, st in zip(sizes, strides, strict=True)) + 1
    if extent * ITEMSIZE[meta["dtype"]] > nbytes:
        raise _refuse(f"the stored tensor {name!r} reaches past the {nbytes} bytes stored for it")


def _payload_paths(table: dict, what: str) -> list[str]:
    """The tensor files a weights / constants table names; each entry checked (raw tensors only)."""
    config = table.get("config")
    if not isinstance(config, dict):
        raise InputError(FIELD, f"not a readable .pt2 archive: the {what} table has no config")
    paths = []
    for name, meta in config.items():
        check_name(name, f"{what} name")
        if not isinstance(meta, dict) or meta.get("use_pickle") is not False:
            raise _refuse(f"{what} {name!r} is stored as a pickle (only raw tensors are read)")
        path = meta.get("path_name")
        if not isinstance(path, str) or not re.fullmatch(r"(weight|tensor)_\d{1,7}", path):
            raise _refuse(f"{what} {name!r} is a {str(path).split('_')[0] or 'non-tensor'} object")
        paths.append(path)
    return sorted(set(paths))  # tied weights share a file


# ----------------------------------------------------------------------------- strings
def check_name(value: object, what: str) -> str:
    """``value`` is a name that may reach generated code: a dotted path of ``[A-Za-z0-9_]`` parts."""
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise _refuse(
            f"the {what} {str(value)[:80]!r} is not a plain name (letters, digits, '_', '.'); names "
            "reach generated code"
        )
    return value


def check_identifier(value: object, what: str) -> str:
    """``value`` is a Python identifier and no keyword: what a graph value's name becomes in generated code."""
    if not isinstance(value, str) or not IDENT.fullmatch(value) or keyword.iskeyword(value):
        raise _refuse(f"the {what} {str(value)[:80]!r} is not a plain identifier; names reach generated code")
    return value


def check_expression(expr: str) -> None:
    """``expr`` is a plain symbolic expression (what sympify may see), or ``InputError``."""
    if len(expr) > 10_000:
        raise _refuse("a symbolic shape expression longer than 10000 characters")
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(expr).readline))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        raise _refuse(f"a symbolic shape expression that does not parse: {expr[:80]!r}") from None
    for tok in tokens:
        ok = (
            tok.type in (tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER)
            or (tok.type == tokenize.NAME and (tok.string in SYMPY_NAMES or SYMBOL_NAME.fullmatch(tok.string)))
            or (tok.type == tokenize.NUMBER and re.fullmatch(r"[0-9.eE+-]+", tok.string))
            or (tok.type == tokenize.STRING and re.fullmatch(r"'[a-z]{1,3}\d{1,9}'", tok.string))
            or (tok.type == tokenize.OP and tok.string in SYMPY_OPS)
        )
        if not ok:
            raise _refuse(
                f"the symbolic shape expression {expr[:80]!r} holds {tok.string!r}, which is not a symbol, "
                "a number or arithmetic (it would be evaluated)"
            )


def check_target(target: str) -> None:
    """``target`` is an allowed ATen operator overload (no ``out=``/resizing form) or plain arithmetic."""
    if target in OPERATOR_TARGETS or target in SYM_TARGETS:
        return
    m = ATEN_TARGET.fullmatch(target)
    if m is None:
        raise _refuse(f"the graph calls {target[:100]!r}; only ATen operators are accepted")
    op, overload = m.groups()
    if op not in ALLOWED_ATEN:
        raise _refuse(
            f"the graph calls aten.{op}, which is not on the list of operators a model may use "
            "(views must check their bounds; no storage, file or uninitialised-memory operators)"
        )
    if OUT_OVERLOAD.fullmatch(overload):
        raise _refuse(f"the graph calls aten.{op}.{overload}, a form that writes into (and resizes) a given tensor")


def check_treespec(text: object) -> None:
    """A pytree spec (``in_spec`` / ``out_spec``): JSON of tuples, lists, dicts with identifier keys, leaves."""
    if not isinstance(text, str) or len(text) > 100_000:
        raise _refuse("a pytree spec that is not a short string")
    spec = load_json(
        text.encode(), field=FIELD, what="a pytree spec", max_bytes=100_000, max_depth=24, max_elements=20_000
    )
    if not (isinstance(spec, list) and len(spec) == 2 and isinstance(spec[1], dict)):
        raise _refuse("a pytree spec that is not [version, spec]")
    stack = [spec[1]]
    while stack:
        node = stack.pop()
        if not isinstance(node, dict) or node.get("type") not in TREESPEC_TYPES:
            kind = node.get("type") if isinstance(node, dict) else node
            raise _refuse(f"a pytree spec with a node of type {str(kind)[:60]!r} (tuples, lists, dicts, tensors only)")
        ctx = node.get("context")
        if node["type"] == "builtins.dict":
            keys = json.loads(ctx) if isinstance(ctx, str) and len(ctx) < 10_000 else None
            if not isinstance(keys, list) or not all(isinstance(k, str) and IDENT.fullmatch(k) for k in keys):
                raise _refuse("a pytree spec whose dict keys are not identifiers")
        elif ctx not in (None, "null"):
            raise _refuse("a pytree spec with a context on a tuple, list or leaf")
        children = node.get("children_spec")
        if not isinstance(children, list):
            raise _refuse("a pytree spec without children")
        stack.extend(children)


def _strings(obj: object, key: str = "") -> Iterator[tuple[str, str, bool]]:
    """Every (field, string, is_dict_key) in ``obj``, skipping the dropped fields; an argument or shape list
    (``as_ints``, ``sizes``, ...) longer than :data:`MAX_ARG_LIST` is refused on the way."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield key, k, True
            if k not in DROPPED:
                yield from _strings(v, k)
    elif isinstance(obj, list):
        if len(obj) > MAX_ARG_LIST and (key.startswith("as_") or key in ("sizes", "strides")):
            raise _refuse(
                f"a list of {len(obj)} values in {key}, over the cap of {MAX_ARG_LIST} (a tensor has at most "
                "a few dozen dimensions)"
            )
        for v in obj:
            yield from _strings(v, key)
    elif isinstance(obj, str):
        yield key, obj, False


def _check_string(field: str, value: str, is_key: bool) -> None:
    if is_key:
        if value in ("as_graph", "as_custom_obj", "as_operator"):
            raise _refuse(f"the graph uses {value[3:]} arguments (control flow or custom objects)")
        if field == "range_constraints":
            check_expression(value)
        elif field in VALUE_TABLES:
            check_identifier(value, f"value name in {field}")
        else:
            check_name(value, "key")
    elif field == "expr_str":
        check_expression(value)
    elif field == "target":
        check_target(value)
    elif field in ("in_spec", "out_spec"):
        check_treespec(value)
    elif field in ("as_string", "as_strings"):
        if not SAFE_STRING.fullmatch(value):
            raise _refuse(f"a string argument {value[:60]!r} outside the characters an operator takes")
    elif field == "type":
        if value not in DEVICE_TYPES:
            raise _refuse(f"the device type {value[:30]!r} (cpu, cuda or meta)")
    elif field in ("torch_version", "schema_version"):
        if not VERSION.fullmatch(value):
            raise _refuse(f"a version string {value[:30]!r}")
    elif field == "verifiers" or field == "forward_arg_names":
        if not IDENT.fullmatch(value):
            raise _refuse(f"{field} holds {value[:60]!r}, not an identifier")
    elif field in PATH_FIELDS:
        if not (field == "fqn" and value == ""):  # the root module's path is empty
            check_name(value, f"name in {field}")
    else:  # a graph value's name (an input, a node, its output, an argument): pasted into generated code
        check_identifier(value, f"name in {field or 'the program'}")


def check_program(program: dict, limits: ArchiveLimits) -> dict:
    """Check the serialized program (module docstring) and return it without what is never read."""
    gm = program.get("graph_module")
    if not isinstance(gm, dict) or not isinstance(gm.get("graph"), dict):
        raise InputError(FIELD, "not a torch.export archive: models/model.json has no graph")
    nodes = gm["graph"].get("nodes")
    if not isinstance(nodes, list):
        raise InputError(FIELD, "not a torch.export archive: the graph has no node list")
    if len(nodes) > limits.nodes:
        raise _refuse(f"the graph has {len(nodes)} nodes, over the cap of {limits.nodes}")
    for field, value, is_key in _strings(program):
        _check_string(field, value, is_key)
    if gm["graph"].get("custom_obj_values"):
        raise _refuse("the program holds custom (TorchBind) objects")
    for node in nodes:
        if not isinstance(node, dict) or not isinstance(node.get("target"), str):
            raise _refuse("a graph node without an operator")
        node["metadata"] = {}
    program["guards_code"] = []
    gm["metadata"] = {}
    return program
