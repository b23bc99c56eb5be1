"""The user's own model through the API with a real worker: export, upload with data, target sparsity, download,
load with plain torch; and state_dicts in the forms people save them."""

from __future__ import annotations

import io
import math

import pytest
import torch
from safetensors.torch import load as st_load

from benchmarks.user_models import ResidualCNN, TabularMLP, digits_npz, export
from tests.service_helpers import artifacts, submit_job, wait_done

CAP = 4_000_000


API_SETTINGS = {"max_upload_bytes": CAP}


SPEC = {
    "kind": "checkpoint",
    "dataset": {"name": "upload"},
    "algorithm": "rvsm",
    "target_sparsity": 0.9,
    "epochs": 12,
    "lr": 0.05,
}


@pytest.mark.parametrize("make,flat", [(ResidualCNN, False), (TabularMLP, True)], ids=["cnn", "mlp"])
def test_exported_model_to_target_sparsity(stack, make, flat):
    client, worker, _ = stack
    torch.manual_seed(0)
    model = make()
    npz, x_val, y_val = digits_npz(flat=flat)
    pt2 = export(model, x_val[:4])
    r = submit_job(client, SPEC, checkpoint=("model.pt2", pt2), dataset=("digits.npz", npz))
    assert r.status_code == 202, r.text
    job = wait_done(client, r.json()["id"])
    assert job["state"] == "succeeded", (job["error"], worker.output()[-3000:])
    report = client.get(f"/v1/jobs/{job['id']}/result").json()
    assert report["architecture"] == "exported" and not report["collapsed"]
    files = artifacts(client, job["id"])
    assert {"model.safetensors", "model.sparse", "model.pt2", "report.json"} <= set(files)

    # the sparsified tensors: every conv / linear weight of the user's module, and nothing else
    weights = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
    names = report["sparsity"]["prunable_names"]
    assert sorted(names) == sorted(f"{n}.weight" for n in weights)
    state = st_load(files["model.safetensors"])
    n = sum(state[k].numel() for k in names)
    zeros = sum(int((state[k] == 0).sum()) for k in names)
    assert abs(zeros - math.floor(0.9 * n)) <= len(names), (zeros, n)  # 0.9 to within one entry per tensor

    # plain torch: the weights load into the user's own module, strictly, and score what the report says
    mine = make()
    mine.load_state_dict(state)
    mine.eval()
    with torch.no_grad():
        out = mine(x_val)
    acc = int((out.argmax(1) == y_val).sum()) / len(y_val)
    assert acc == pytest.approx(report["accuracy_after"], abs=1e-9)
    assert acc > 0.6  # far above the 0.1 of a collapsed network
    # the returned exported program computes the same function
    ep = torch.export.load(io.BytesIO(files["model.pt2"]))
    with torch.no_grad():
        assert torch.allclose(ep.module()(x_val), out, atol=1e-5)


def test_exported_model_input_checks(stack):
    client = stack.client
    torch.manual_seed(0)
    npz, x_val, _ = digits_npz(flat=True)
    image_model = export(ResidualCNN(), torch.randn(4, 1, 8, 8))
    r = submit_job(client, SPEC, checkpoint=("m.pt2", image_model), dataset=("d.npz", npz))
    assert r.status_code == 422 and "(64,)" in r.json()["message"] and "(1, 8, 8)" in r.json()["message"], r.text
    fixed = io.BytesIO()
    mlp = TabularMLP().eval()
    torch.export.save(torch.export.export(mlp, (x_val[:4],)), fixed)  # no dynamic batch dimension
    r = submit_job(client, SPEC, checkpoint=("m.pt2", fixed.getvalue()), dataset=("d.npz", npz))
    assert r.status_code == 422 and "dynamic batch dimension" in r.json()["message"], r.text
    r = submit_job(
        client, SPEC | {"architecture": "lenet5"}, checkpoint=("m.pt2", export(mlp, x_val[:4])), dataset=("d.npz", npz)
    )
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "architecture", r.text


@pytest.mark.parametrize(
    "wrap,note",
    [
        (lambda sd: {"state_dict": sd, "epoch": 3, "optimizer_states": []}, "unwrapped {'state_dict'"),
        (lambda sd: {"model": sd}, "unwrapped {'model'"),
        (lambda sd: {"model_state_dict": sd, "optimizer_state_dict": {}}, "unwrapped {'model_state_dict'"),
        (lambda sd: {f"module.{k}": v for k, v in sd.items()}, "prefix 'module.'"),
        (lambda sd: {f"_orig_mod.{k}": v for k, v in sd.items()}, "prefix '_orig_mod.'"),
        (lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}}, "prefix 'module.'"),
    ],
    ids=["lightning", "model", "model_state_dict", "ddp", "compile", "lightning+ddp"],
)
def test_state_dict_forms(stack, wrap, note):
    client, worker, _ = stack
    from rvsm import models

    torch.manual_seed(0)
    sd = models.build("mlp", num_classes=10, in_features=64, hidden=[32]).state_dict()
    buf = io.BytesIO()
    torch.save(wrap(sd), buf)
    spec = {
        "kind": "checkpoint",
        "architecture": "mlp",
        "hidden": [32],
        "dataset": {"name": "digits"},
        "algorithm": "rvsm",
        "target_sparsity": 0.5,
        "epochs": 1,
    }
    r = submit_job(client, spec, checkpoint=("model.pt", buf.getvalue()))
    assert r.status_code == 202, r.text
    job = wait_done(client, r.json()["id"])
    assert job["state"] == "succeeded", (job["error"], worker.output()[-2000:])
    report = client.get(f"/v1/jobs/{job['id']}/result").json()
    assert any(note in n for n in report["normalised"]), report["normalised"]
    assert report["accuracy_before"] > 0.0 and report["from_checkpoint"]
    assert set(st_load(artifacts(client, job["id"])["model.safetensors"])) == set(sd)  # the model's own names


def test_a_whole_pickled_model_gets_a_short_plain_message(stack):
    client = stack.client
    buf = io.BytesIO()
    torch.save(TabularMLP(), buf)  # the whole module, not its state_dict
    spec = {"kind": "checkpoint", "architecture": "mlp", "dataset": {"name": "digits"}, "epochs": 1}
    r = submit_job(client, spec, checkpoint=("model.pt", buf.getvalue()))
    assert r.status_code == 422
    msg = r.json()["message"]
    assert "state_dict()" in msg and "torch.export" in msg and "\x1b" not in msg and len(msg) < 400, msg
    assert msg.rstrip().endswith("'model.pt2')"), msg  # whole, not cut off


@pytest.mark.parametrize(
    "patch,field",
    [
        ({"algorithm": "rvsm", "sparsity": 0.9}, "sparsity"),
        ({"algorithm": "sgd", "target_sparsity": 0.9}, "target_sparsity"),
        ({"algorithm": "rvsm", "target_sparsity": 0.9, "penalty": "l1"}, "penalty"),
        ({"algorithm": "magnitude"}, "target_sparsity"),
        ({"algorithm": "admm", "sparsity": 0.5, "target_sparsity": 0.9}, "sparsity"),
        ({"architecture": "exported"}, "architecture"),
        ({"architecture": "mlp", "params": ["nothing.*"]}, "params"),
        ({"task": "regression"}, "task"),
    ],
)
def test_fields_an_algorithm_would_ignore_are_rejected(stack, patch, field):
    client = stack.client
    spec = {"kind": "checkpoint", "architecture": "lenet5", "dataset": {"name": "digits"}, "epochs": 1} | patch
    r = client.post("/v1/jobs", json=spec)
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"][-1] == field, r.text
