"""Crafted ``.pt2`` archives never run code: each of torch.export.load's code paths is refused by rvsm.exported.

Each archive is a real export of a small model with one part replaced by a payload that creates a marker file
when it runs. Where plain ``torch.export.load`` runs the payload on this torch, a test says so first (what we
defend against is real), then shows that ``rvsm.exported.load`` refuses the archive and the marker never appears.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile

import pytest
import torch

from benchmarks.user_models import ResidualCNN, export
from rvsm import archive, exported
from rvsm.archive import ArchiveLimits
from rvsm.errors import InputError


class Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def good() -> bytes:
    torch.manual_seed(0)
    return export(ResidualCNN(), torch.randn(4, 1, 8, 8))


def rebuild(pt2: bytes, edit) -> bytes:
    """The archive with ``edit(name, data) -> data | None`` applied to each member (None drops it), plus any
    members ``edit`` returns for the key ``"+"``."""
    src = zipfile.ZipFile(io.BytesIO(pt2))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for name in src.namelist():
            data = edit(name, src.read(name))
            if data is not None:
                z.writestr(name, data)
        for name, data in (edit("+", b"") or {}).items():
            z.writestr(name, data)
    return out.getvalue()


def edit_program(pt2: bytes, change) -> bytes:
    def edit(name, data):
        if name.endswith("models/model.json"):
            program = json.loads(data)
            change(program)
            return json.dumps(program).encode()
        return None if name == "+" else data

    return rebuild(pt2, edit)


def refused(blob: bytes, marker, *words: str) -> None:
    with pytest.raises(InputError) as e:
        exported.load(blob)
    assert not os.path.exists(marker), "the payload ran"
    for w in words:
        assert w in str(e.value), str(e.value)


def torch_runs_it(blob: bytes, marker) -> bool:
    """Whether plain torch.export.load (and unlifting, and one forward) runs the payload on this torch."""
    try:
        torch.export.load(io.BytesIO(blob)).module()(torch.randn(2, 1, 8, 8))
    except Exception:  # noqa: BLE001 - torch may fail after the payload ran
        pass
    ran = os.path.exists(marker)
    if ran:
        os.remove(marker)
    return ran


def test_the_clean_archive_loads(good):
    e = exported.load(good)
    assert e.input_shape == (1, 8, 8) and e.output_shape == (10,)


def test_sympy_expression_payload(good, tmp_path):
    marker = tmp_path / "sympy"

    def change(p):
        sizes = p["graph_module"]["graph"]["tensor_values"]["x"]["sizes"]
        sizes[0]["as_expr"]["expr_str"] = f"__import__('os').system('touch {marker}')"

    blob = edit_program(good, change)
    assert torch_runs_it(blob, marker)  # torch.export.load evaluates shape expressions with sympify
    refused(blob, marker, "symbolic shape expression", "__import__")


def test_guards_code_payload(good, tmp_path):
    marker = tmp_path / "guard"
    code = f"__import__('os').system('touch {marker}') == 0"
    blob = edit_program(good, lambda p: p.__setitem__("guards_code", [code]))
    assert torch_runs_it(blob, marker)  # ExportedProgram.module() compiles guards_code into _guards_fn
    e = exported.load(blob)  # we drop guards code: it never runs, and the model still works
    e.module(torch.randn(3, 1, 8, 8))
    assert not marker.exists()


def test_graph_target_payload(good, tmp_path):
    marker = tmp_path / "target"

    def change(p):
        for node in p["graph_module"]["graph"]["nodes"]:
            if node["target"] == "torch.ops.aten.relu.default":
                node["target"] = "torch.os.system"
                node["inputs"] = [{"name": "command", "arg": {"as_string": f"touch {marker}"}, "kind": 1}]
                return

    refused(edit_program(good, change), marker, "torch.os.system", "only ATen")


@pytest.mark.parametrize("target", ["torch.ops.aten.from_file.default", "torch.ops.higher_order.cond", "builtins.eval"])
def test_other_targets_are_refused(good, tmp_path, target):
    def change(p):
        p["graph_module"]["graph"]["nodes"][0]["target"] = target

    refused(edit_program(good, change), tmp_path / "none", "refused")


def test_pickled_weight_payload(good, tmp_path):
    marker = tmp_path / "weight"
    buf = io.BytesIO()
    torch.save(Payload(str(marker)), buf)

    def edit(name, data):
        if name.endswith("model_weights_config.json"):
            config = json.loads(data)
            first = next(iter(config["config"].values()))
            first["use_pickle"] = True
            return json.dumps(config).encode()
        if name.endswith("weights/weight_0"):
            return buf.getvalue()
        return None if name == "+" else data

    blob = rebuild(good, edit)
    assert torch_runs_it(blob, marker)  # a use_pickle weight is read by torch.load(weights_only=False)
    refused(blob, marker, "pickle")


def test_sample_inputs_pickle_payload(good, tmp_path):
    marker = tmp_path / "sample"
    buf = io.BytesIO()
    torch.save(((Payload(str(marker)),), {}), buf)

    def edit(name, data):
        return buf.getvalue() if name.endswith("sample_inputs/model.pt") else (None if name == "+" else data)

    blob = rebuild(good, edit)
    assert torch_runs_it(blob, marker)  # weights_only=True fails, then torch falls back to weights_only=False
    exported.load(blob)  # the sample inputs are dropped unread (rvsm.archive): nothing to refuse, nothing runs
    assert not os.path.exists(marker), "the payload ran"


def test_opaque_constant_payload(good, tmp_path):
    marker = tmp_path / "opaque"
    payload = pickle.dumps(Payload(str(marker)))

    def edit(name, data):
        if name.endswith("model_constants_config.json"):
            return json.dumps(
                {
                    "config": {
                        "c": {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True, "tensor_meta": None}
                    }
                }
            ).encode()
        if name == "+":
            return {"archive/data/constants/opaque_obj_0": payload}
        return data

    refused(rebuild(good, edit), marker, "refused")


@pytest.mark.parametrize(
    "edit,words",
    [
        (lambda n, d: None if n.endswith("models/model.json") else d, "no models/model.json"),
        (lambda n, d: {"archive/extra/../../evil.py": b"x"} if n == "+" else d, "unexpected file"),
        (lambda n, d: b"{not json" if n.endswith("models/model.json") else (None if n == "+" else d), "not JSON"),
    ],
)
def test_malformed_archives(good, edit, words):
    with pytest.raises(InputError, match="checkpoint") as e:
        exported.load(rebuild(good, edit))
    assert words in str(e.value)


def test_truncated_and_oversized_archives(good):
    with pytest.raises(InputError, match="not a readable"):
        exported.load(good[: len(good) // 2])
    with pytest.raises(InputError, match="unpacks to .* bytes, over the cap of 1000"):
        exported.load(good, limits=ArchiveLimits(bytes=1000))


def test_expression_grammar():
    archive.check_expression("Symbol('s77', positive=True, integer=True)")
    archive.check_expression("2*s0 + FloorDiv(s1, 4) - Mod(s2, 3) <= 10")
    for bad in ("s0.__class__", "().__class__", "open('x')", "[s0][0]", "lambda: 1", "s0 if 1 else 2"):
        with pytest.raises(InputError):
            archive.check_expression(bad)
