"""Issue 9's 5xx audit of uploaded files: every odd checkpoint or data file is a 4xx naming the field and
the rule, at submit time, through the real API (real Redis queue, no worker for the refusals); the odd
files that are accepted are trained to success by a real worker (nothing fails there that the API saw)."""

from __future__ import annotations

import io
import json
import struct

import numpy as np
import pytest
import torch
from safetensors.torch import save as st_save

from rvsm import models
from tests import service_helpers as helpers
from tests.service_helpers import Worker, service_env, unique_queue, wait_for

LENET = {"kind": "checkpoint", "architecture": "lenet5", "algorithm": "rvsm", "epochs": 1}
UPLOAD = {
    "kind": "checkpoint",
    "architecture": "mlp",
    "algorithm": "rvsm",
    "epochs": 1,
    "batch_size": 8,
    "dataset": {"name": "upload"},
}
CAP = 1_000_000


API_SETTINGS = {"max_upload_bytes": CAP}


@pytest.fixture(scope="module")
def lenet() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return dict(models.build("lenet5", in_channels=1, input_size=8, num_classes=10).state_dict())


def expect(r, status: int, *words: str) -> None:
    assert r.status_code == status, r.text
    for w in words:
        assert w in r.json()["message"], (w, r.json()["message"])


def pt(state: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def with_checkpoint(client, blob: bytes, name: str, spec: dict = LENET):
    return client.post("/v1/jobs", data={"spec": json.dumps(spec)}, files={"checkpoint": (name, blob)})


def with_dataset(client, blob: bytes, name: str = "d.npz", spec: dict = UPLOAD):
    return client.post("/v1/jobs", data={"spec": json.dumps(spec)}, files={"dataset": (name, blob)})


# ----------------------------------------------------------------------------- checkpoints
def _changed(state: dict, key: str, tensor: torch.Tensor) -> dict:
    return {**state, key: tensor}


W = "features.0.weight"  # (6, 1, 5, 5)


@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
@pytest.mark.parametrize(
    "edit,words",
    [
        (lambda s: _changed(s, W, s[W].to(torch.float8_e4m3fn)), (W, "float8_e4m3fn", "cannot be trained")),
        (lambda s: _changed(s, W, s[W].to(torch.complex64)), (W, "complex64", "cannot be trained")),
        (lambda s: _changed(s, W, s[W].to(torch.int64)), (W, "int64", "expected a float")),
        (lambda s: _changed(s, W, s[W].reshape(6, 25)), (W, "(6, 25)", "expected (6, 1, 5, 5)")),
        (lambda s: {**s, "extra.weight": torch.zeros(2)}, ("unexpected keys ['extra.weight']",)),
        (lambda s: {k: v for k, v in s.items() if k != W}, (f"missing keys ['{W}']",)),
        (lambda s: _changed(s, W, torch.full_like(s[W], float("nan"))), (W, "NaN")),
    ],
    ids=["float8", "complex", "int", "shape", "extra-key", "missing-key", "nan"],
)
def test_odd_checkpoint_tensors_are_422s_naming_the_tensor(client, lenet, fmt, edit, words):
    state = edit(lenet)
    blob, name = (st_save(state), "m.safetensors") if fmt == "safetensors" else (pt(state), "m.pt")
    expect(with_checkpoint(client, blob, name), 422, "checkpoint", *words)


@pytest.mark.parametrize(
    "tensor,words",
    [
        (torch.empty(6, 1, 5, 5, device="meta"), ("meta", "no dense data")),
        (torch.zeros(6, 1, 5, 5).to_sparse(), ("sparse", "no dense data")),
    ],
    ids=["meta", "sparse"],
)
def test_tensors_without_dense_data_are_422s(client, lenet, tensor, words):
    expect(with_checkpoint(client, pt(_changed(lenet, W, tensor)), "m.pt"), 422, "checkpoint", W, *words)


def _header(header: dict, data: bytes = b"") -> bytes:
    """A safetensors file with this JSON header (whatever it declares) and these data bytes."""
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


@pytest.mark.parametrize(
    "blob,words",
    [
        (b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}", ("not a safetensors", "not JSON")),
        (b"\xff" * 64, ("not a safetensors", "header length")),
        (b"\x09\x00\x00\x00\x00\x00\x00\x00[1, 2, 3]", ("not a safetensors", "not a JSON object")),
        (b'\x20\x00\x00\x00\x00\x00\x00\x00{"w": {"dtype": "F32"}}          ', ("no valid dtype and shape",)),
        (b"", ("empty",)),
        (_header({"w": {"dtype": "F32", "shape": [2**62, 2**62], "data_offsets": [0, 0]}}), ("declares",)),
        (_header({"w": {"dtype": "F32", "shape": [2**70], "data_offsets": [0, 0]}}), ("declares",)),
    ],
    ids=["not-json", "bad-length", "json-list", "no-shape", "empty", "overflowing-shape", "huge-dim"],
)
def test_a_file_that_is_not_safetensors_is_a_422(client, blob, words):
    expect(with_checkpoint(client, blob, "m.safetensors"), 422, "checkpoint", *words)


# ----------------------------------------------------------------------------- data sets
RNG = np.random.default_rng(0)
X = RNG.normal(size=(40, 4)).astype(np.float32)
Y = (X.sum(1) > 0).astype(np.int64)


def _nan_x() -> np.ndarray:
    x = X.copy()
    x[5, 2] = np.nan
    return x


@pytest.mark.parametrize(
    "arrays,words",
    [
        ({"y": Y}, ("needs arrays ['x']",)),
        ({"x": X}, ("needs arrays ['y']",)),
        ({"x": np.array([object(), 1], dtype=object), "y": Y[:2]}, ("x", "object")),
        ({"x": X[:0], "y": Y[:0]}, ("x", "N >= 1")),
        ({"x": X[:1], "y": Y[:1]}, ("at least 2 samples", "got 1")),
        ({"x": X, "y": Y - 1}, ("class labels", "-1..0")),
        ({"x": X, "y": Y.astype(np.float32) + 0.5}, ("y", "integer class labels", "regression")),
        ({"x": X, "y": np.where(Y > 0, 2_000_000, 0)}, ("2000000", "[0, 10000)")),
        ({"x": _nan_x(), "y": Y}, ("finite", "NaN")),
        ({"x": X, "y": Y, "x_val": X[:5]}, ("x_val and y_val together",)),
        ({"x": X, "y": Y, "y_val": Y[:5]}, ("x_val and y_val together",)),
        ({"x": X.astype(np.complex64), "y": Y}, ("x", "complex64")),
        ({"x": X, "y": Y.astype(bool)}, ("y", "bool")),
        ({"x": X, "y": np.stack([Y, Y], 1)}, ("per-token labels y", "(2, 2)")),
        ({"x": X[:, 0], "y": Y}, ("x", "(N, ...)")),
        ({"x": X, "y": Y[:30]}, ("y", "40 rows")),
        ({"x": X, "y": Y, "x_val": X[:5, :3], "y_val": Y[:5]}, ("per-sample shapes",)),
        ({"x": X.astype("U8"), "y": Y}, ("x", "<U8")),
    ],
    ids=[
        "no-x",
        "no-y",
        "objects",
        "empty",
        "one-sample",
        "negative",
        "non-integer",
        "huge",
        "nan",
        "x_val-alone",
        "y_val-alone",
        "complex",
        "bool-labels",
        "2d-labels",
        "1d-x",
        "rows",
        "val-shape",
        "strings",
    ],
)
def test_odd_npz_data_sets_are_422s_naming_the_rule(client, arrays, words):
    blob = npz(**arrays)
    expect(with_dataset(client, blob), 422, "dataset", *words)


@pytest.mark.parametrize(
    "tensors,words",
    [
        ({"x": torch.from_numpy(X).to(torch.float8_e4m3fn), "y": torch.from_numpy(Y)}, ("x", "F8_E4M3")),
        ({"x": torch.from_numpy(X), "y": torch.from_numpy(Y).to(torch.float64)}, ("y", "F64", "integer")),
        ({"x": torch.from_numpy(X)[:1], "y": torch.from_numpy(Y)[:1]}, ("at least 2 samples",)),
    ],
    ids=["float8-x", "float-labels", "one-sample"],
)
def test_odd_safetensors_data_sets_are_422s(client, tensors, words):
    expect(with_dataset(client, st_save(tensors), "d.safetensors"), 422, "dataset", *words)


@pytest.mark.parametrize(
    "blob,name,words",
    [
        (b"this is not a zip file", "d.npz", ("not a .npz",)),
        (st_save({"x": torch.zeros(2, 2)}), "d.npz", ("not a .npz",)),
        (npz(x=X, y=Y), "d.safetensors", ("not a safetensors",)),
        (b"garbage", "d.safetensors", ("not a safetensors",)),
    ],
    ids=["text-as-npz", "safetensors-as-npz", "npz-as-safetensors", "garbage-as-safetensors"],
)
def test_a_file_that_is_not_what_its_name_says_is_a_422(client, blob, name, words):
    expect(with_dataset(client, blob, name), 422, "dataset", *words)


def test_a_data_header_that_declares_more_than_the_file_holds_is_a_422(client):
    """The shapes of a safetensors header are checked against the file's size before anything is made of them."""
    blob = _header(
        {
            "x": {"dtype": "F32", "shape": [2**62, 2**62], "data_offsets": [0, 0]},
            "y": {"dtype": "I64", "shape": [2**62], "data_offsets": [0, 0]},
        }
    )
    expect(with_dataset(client, blob, "d.safetensors"), 422, "dataset", "declares")


def test_a_zip_with_other_members_is_not_an_npz(client):
    buf = io.BytesIO()
    import zipfile

    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("x.npy", b"\x93NUMPY")  # a truncated header
        z.writestr("notes.txt", b"hello")
    expect(with_dataset(client, buf.getvalue()), 422, "dataset", "not")


# ----------------------------------------------------------------------------- accepted odd files train
def test_odd_but_valid_files_are_accepted_and_train_in_the_worker(tmp_path, lenet):
    """What the API accepts, the worker trains: integer pixels, float16, unused classes, two samples,
    an explicit validation set, float64 and bfloat16 weights, a state_dict wrapped and prefixed."""
    queue = unique_queue("files-ok")
    spec64 = LENET | {"dataset": {"name": "digits"}}
    wrapped = {"state_dict": {f"module.{k}": v.to(torch.float64) for k, v in lenet.items()}}
    cases = [
        (UPLOAD, {"dataset": ("d.npz", npz(x=(X * 50).astype(np.uint8), y=Y * 3))}),  # labels 0 and 3 only
        (
            UPLOAD,
            {"dataset": ("d.safetensors", st_save({"x": torch.from_numpy(X).half(), "y": torch.from_numpy(Y).int()}))},
        ),
        (UPLOAD | {"batch_size": 1}, {"dataset": ("d.npz", npz(x=X[:2], y=np.array([0, 1])))}),
        (UPLOAD, {"dataset": ("d.npz", npz(x=X, y=Y, x_val=X[:3], y_val=Y[:3]))}),
        (spec64, {"checkpoint": ("m.pt", pt(wrapped))}),
        (spec64, {"checkpoint": ("m.safetensors", st_save({k: v.bfloat16() for k, v in lenet.items()}))}),
    ]
    worker = Worker(service_env(tmp_path, queue=queue), queue, tmp_path / "w.log")
    try:
        with helpers.make_client(tmp_path, queue, max_upload_bytes=CAP) as c:
            ids = []
            for spec, files in cases:
                r = c.post("/v1/jobs", data={"spec": json.dumps(spec)}, files=files)
                assert r.status_code == 202, r.text
                ids.append(r.json()["id"])
            for job_id in ids:

                def done(j=job_id):
                    s = c.get(f"/v1/jobs/{j}").json()
                    return s if s["state"] in ("succeeded", "failed", "cancelled") else None

                job = wait_for(done, timeout=240, what=f"job {job_id}")
                assert job["state"] == "succeeded", (job, worker.output()[-3000:])
            first = c.get(f"/v1/jobs/{ids[0]}/result").json()
            assert first["dataset"]["num_classes"] == 4  # labels 0 and 3: four outputs
    finally:
        worker.stop()
