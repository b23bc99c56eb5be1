"""Checkpoint jobs through the API with a real worker: upload, train sparse, download, check; resume; bad files."""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
import uuid

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from rvsm import data as rdata
from rvsm import models, sparse_io
from rvsm.train import TrainConfig, train
from tests import service_helpers as helpers
from tests.service_helpers import Worker, service_env, submit_job, unique_queue, wait_done, wait_for

RVSM_L0 = {
    "kind": "checkpoint",
    "architecture": "lenet5",
    "dataset": {"name": "digits"},
    "algorithm": "rvsm",
    "target_sparsity": 0.9,
    "epochs": 8,
    "lr": 0.02,
    "weight_decay": 1e-4,
}
LAMBDA_L0 = RVSM_L0 | {
    "target_sparsity": None,
    "penalty": "l0",
    "lam": 5e-5,
    "beta": 0.01,
    "beta_final": 1.0,
    "layer_scale": False,
}
CAP = 1_000_000
API_SETTINGS = {"max_upload_bytes": CAP}  # the stack fixture's (conftest)


@pytest.fixture(scope="module")
def trained() -> dict[str, torch.Tensor]:
    """A lenet5 trained on digits (plain SGD): what an ML engineer uploads."""
    torch.manual_seed(0)
    m = models.build("lenet5", in_channels=1, input_size=8, num_classes=10)
    r = train(m, rdata.digits(), TrainConfig(algorithm="sgd", epochs=15, weight_decay=1e-4))
    assert r.score_after > 0.9
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def make_client(tmp, queue: str) -> TestClient:
    return helpers.make_client(tmp, queue, **API_SETTINGS)


def submit(client: TestClient, spec: dict, checkpoint: bytes | None = None, name: str = "model.safetensors"):
    return submit_job(client, spec, **({"checkpoint": (name, checkpoint)} if checkpoint is not None else {}))


def test_upload_sparsify_download_and_check(stack, trained, tmp_path):
    client, worker, _ = stack
    r = submit(client, RVSM_L0, st_save(trained))
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    job = wait_done(client, job_id)
    assert job["state"] == "succeeded", (job, worker.output()[-3000:])
    report = client.get(f"/v1/jobs/{job_id}/result").json()
    assert report["from_checkpoint"] and report["accuracy_before"] > 0.9
    assert [p["epoch"] for p in report["trace"]] == list(range(1, 9))

    arts = {a["name"]: a for a in client.get(f"/v1/jobs/{job_id}/artifacts").json()}
    assert set(arts) == {"model.safetensors", "model.sparse", "report.json"}
    blobs = {}
    for name, a in arts.items():
        body = client.get(f"/v1/jobs/{job_id}/artifacts/{name}").content
        assert hashlib.sha256(body).hexdigest() == a["sha256"]
        blobs[name] = body
    dense = st_load(blobs["model.safetensors"])
    # plain torch: a fresh lenet5 takes the file as is
    model = models.build("lenet5", in_channels=1, input_size=8, num_classes=10)
    model.load_state_dict(dense)
    # the compact file gives back exactly the same tensors
    back = sparse_io.load(blobs["model.sparse"])
    assert set(back) == set(dense)
    for k in dense:
        assert back[k].dtype == dense[k].dtype and torch.equal(back[k].view(torch.uint8), dense[k].view(torch.uint8))
    # sparsity and accuracy, recomputed here from the downloaded tensors, equal the report
    names = report["sparsity"]["prunable_names"]
    zeros = sum(int((dense[n] == 0).sum()) for n in names)
    total = sum(dense[n].numel() for n in names)
    assert zeros / total == pytest.approx(report["sparsity"]["prunable"], abs=1e-12)
    for n in names:
        assert report["sparsity"]["layers"][n]["zeros"] == int((dense[n] == 0).sum())
    acc = rdata.accuracy(model, *_val())
    assert acc == pytest.approx(report["accuracy_after"], abs=1e-12)
    assert report["sparsity"]["prunable"] == pytest.approx(0.9, abs=1e-3)  # the target, from the tensors themselves
    assert report["sizes"]["sparse_bytes"] < report["sizes"]["dense_safetensors_bytes"]
    assert job["summary"]["sparsity"] == report["sparsity"]["prunable"]
    assert not (tmp_path.parent / "resume.pt").exists()


def _val():
    d = rdata.digits()
    return d.x_val, d.y_val


def test_pt_state_dict_and_training_from_scratch(stack, trained):
    client, worker, _ = stack
    buf = io.BytesIO()
    torch.save(trained, buf)
    lam_spec = {k: v for k, v in LAMBDA_L0.items() if v is not None} | {"epochs": 1}  # lambda mode, absolute threshold
    r = submit(client, lam_spec, buf.getvalue(), name="model.pt")
    assert r.status_code == 202, r.text
    scratch = client.post(
        "/v1/jobs",
        json=RVSM_L0
        | {
            "algorithm": "magnitude",
            "target_sparsity": 0.5,
            "epochs": 2,
            "finetune_epochs": 1,
            "sparsity_scope": "layer",
        },
    )
    assert scratch.status_code == 202, scratch.text
    for job_id in (r.json()["id"], scratch.json()["id"]):
        assert wait_done(client, job_id)["state"] == "succeeded", worker.output()[-3000:]
    rep = client.get(f"/v1/jobs/{scratch.json()['id']}/result").json()
    assert not rep["from_checkpoint"] and rep["sparsity"]["prunable"] == pytest.approx(0.5, abs=0.01)
    assert [p["epoch"] for p in rep["trace"]] == [1, 2, 3]


def test_progress_moves_within_an_epoch(stack):
    """Issue 11: progress counts optimizer steps, and says which epoch and which step of it, so a long
    epoch is not a frozen bar. One epoch of batch 1 (~1,400 steps): several reads inside epoch 1."""
    client, worker, _ = stack
    job_id = client.post("/v1/jobs", json=RVSM_L0 | {"epochs": 1, "batch_size": 1}).json()["id"]
    at_submit = client.get(f"/v1/jobs/{job_id}").json()["progress"]["max_iters"]  # the check's count, before any worker
    seen: list[dict] = []

    def two_steps_seen() -> bool:
        p = client.get(f"/v1/jobs/{job_id}").json()["progress"]
        if p["step"] is not None and 0 < p["step"] < p["steps"]:
            seen.append(p)
        return len({q["step"] for q in seen}) >= 2

    wait_for(two_steps_seen, timeout=120, interval=0.05, what="two progress reads inside the epoch")
    client.post(f"/v1/jobs/{job_id}/cancel")
    first, last = seen[0], seen[-1]
    assert first["epoch"] == last["epoch"] == 1 and first["epochs"] == 1 and first["steps"] == last["steps"]
    assert first["step"] < last["step"] and first["iteration"] == first["step"]
    assert first["max_iters"] == first["steps"] and 0 < first["fraction"] < last["fraction"] < 1
    assert at_submit == first["max_iters"]  # max_iters counts optimizer steps from the submit on, never epochs
    assert wait_done(client, job_id)["state"] == "cancelled"


def test_worker_killed_mid_epoch_resumes_from_its_saved_state(tmp_path):
    queue = unique_queue("ckpt-kill")
    # the default visibility timeout: the job store's reconciler, not Redis, hands the job on
    env = service_env(tmp_path, queue=queue, RVSM_LEASE_S="2", RVSM_REAPER_INTERVAL_S="1")
    spec = RVSM_L0 | {"epochs": 14, "batch_size": 8, "seed": 3}
    with make_client(tmp_path, queue) as client:
        first = Worker(env, queue, tmp_path / "w1.log")
        try:
            job_id = client.post("/v1/jobs", json=spec).json()["id"]
            wait_for(
                lambda: (client.get(f"/v1/jobs/{job_id}").json()["progress"]["epoch"] or 0) >= 4,
                timeout=120,
                interval=0.05,
                what="epoch 3 to finish",
            )
            time.sleep(0.15)  # into the next epoch
        finally:
            first.kill()
        at_kill = client.get(f"/v1/jobs/{job_id}").json()
        assert at_kill["state"] == "running" and at_kill["progress"]["epoch"] < 14
        assert (tmp_path / "artifacts" / job_id / "resume.pt").exists()
        second = Worker(env, queue, tmp_path / "w2.log")
        try:
            done = wait_done(client, job_id)
        finally:
            second.stop()
        assert done["state"] == "succeeded", second.output()[-3000:]
        assert done["attempts"] == 2
        report = client.get(f"/v1/jobs/{job_id}/result").json()
        assert report["resumed_from_epoch"] is not None and report["resumed_from_epoch"] >= 3
        assert [p["epoch"] for p in report["trace"]] == list(range(1, 15))  # every epoch once
        assert not (tmp_path / "artifacts" / job_id / "resume.pt").exists()
    # resuming changed nothing: an uninterrupted run gives the same trace and result
    torch.manual_seed(3)
    m = models.build("lenet5", in_channels=1, input_size=8, num_classes=10)
    fields = {k: v for k, v in spec.items() if k not in ("kind", "architecture", "dataset")}
    ref = train(m, rdata.digits(), TrainConfig(**fields))
    for a, b in zip(ref.trace, report["trace"], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
    assert ref.score_after == pytest.approx(report["accuracy_after"], abs=1e-12)


# ----------------------------------------------------------------------------- bad checkpoints
def expect(r, status: int, *words: str) -> None:
    assert r.status_code == status, r.text
    for w in words:
        assert w in r.json()["message"], (w, r.json()["message"])


class _Evil:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_bad_checkpoints(stack, trained, tmp_path):
    client, _, _ = stack
    before = client.get("/v1/jobs").json()["total"]
    expect(submit(client, RVSM_L0, b"this is not a checkpoint at all"), 422, "checkpoint", "not a safetensors")
    good = st_save(trained)
    expect(submit(client, RVSM_L0, good[: len(good) // 2]), 422, "checkpoint")
    # a pickle with code in it: refused, and the code never runs
    marker = tmp_path / f"pwned-{uuid.uuid4().hex}"
    buf = io.BytesIO()
    torch.save({"w": _Evil(str(marker))}, buf)
    expect(submit(client, RVSM_L0, buf.getvalue(), name="model.pt"), 422, "checkpoint", "refused")
    raw = io.BytesIO()
    import pickle

    pickle.dump(_Evil(str(marker)), raw, protocol=2)
    expect(submit(client, RVSM_L0, raw.getvalue(), name="model.pkl"), 422, "checkpoint")
    assert not marker.exists()
    # keys and shapes that do not match the architecture are named
    wrong = dict(trained)
    del wrong["features.0.bias"]
    wrong["extra.weight"] = torch.zeros(2)
    expect(
        submit(client, RVSM_L0, st_save(wrong)),
        422,
        "missing keys ['features.0.bias']",
        "unexpected keys ['extra.weight']",
    )
    shaped = dict(trained)
    shaped["classifier.5.weight"] = torch.zeros(7, 84)
    expect(submit(client, RVSM_L0, st_save(shaped)), 422, "classifier.5.weight (7, 84) (expected (10, 84))")
    expect(submit(client, RVSM_L0 | {"architecture": "mlp"}, good), 422, "missing keys")
    # over the size cap
    expect(submit(client, RVSM_L0, b"\0" * (CAP + 10)), 413, "checkpoint", "larger")
    assert client.get("/v1/jobs").json()["total"] == before  # nothing was stored


@pytest.mark.parametrize(
    "patch,words",
    [
        ({"architecture": "alexnet"}, ("architecture",)),
        ({"algorithm": "admm", "target_sparsity": None}, ("target_sparsity", "needs a target sparsity")),
        ({"algorithm": "rvscgd"}, ("algorithm", "binarized")),
        ({"dataset": {"name": "upload"}}, ("dataset", "exactly when")),
        ({"dataset": {"name": "folder", "path": "x"}}, ("dataset.name", "not enabled")),
        ({"epochs": 5000}, ("epochs", "5000", "over the cap of 1000")),
        ({"params": ["nope.weight"]}, ("params", "nope.weight")),
        ({"lr": -1}, ("lr", "greater than 0")),
        ({"colour": 1}, ("colour", "Extra inputs")),
    ],
)
def test_bad_checkpoint_specs(stack, patch, words):
    client, _, _ = stack
    expect(client.post("/v1/jobs", json=RVSM_L0 | patch), 422, *words)


def test_multipart_form_errors(stack):
    client, _, _ = stack
    expect(client.post("/v1/jobs", data={"spec": "{not json"}, files={"checkpoint": ("m", b"x")}), 422, "spec")
    expect(client.post("/v1/jobs", data={"nospec": "1"}, files={"checkpoint": ("m", b"x")}), 422, "nospec")
    toy = {"kind": "toy", "k": 2, "d": 3, "lam": 0.0, "beta": 1.0, "eta": 0.1}
    expect(client.post("/v1/jobs", data={"spec": json.dumps(toy)}, files={"checkpoint": ("m", b"x")}), 422, "toy")


def test_uploaded_and_folder_datasets(tmp_path):
    """dataset.name = upload (a multipart .npz) and = folder (ImageFolder under RVSM_DATASETS_DIR), end to end."""
    import numpy as np
    from PIL import Image

    root = tmp_path / "datasets"
    for c, shade in (("dark", 30), ("light", 220)):
        (root / "shapes" / c).mkdir(parents=True)
        for i in range(12):
            Image.new("L", (12, 12), color=shade + i).save(root / "shapes" / c / f"{i}.png")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(120, 1, 4, 4, generator=g)
    y = (x.flatten(1).sum(1) > 0).long()
    buf = io.BytesIO()
    np.savez(buf, x=x.numpy(), y=y.numpy())
    queue = unique_queue("data")
    env = service_env(tmp_path, queue=queue, RVSM_DATASETS_DIR=str(root))
    worker = Worker(env, queue, tmp_path / "w.log")
    try:
        with helpers.make_client(tmp_path, queue, datasets_dir=root) as client:
            spec = {"kind": "checkpoint", "architecture": "mlp", "algorithm": "rvsm", "epochs": 2, "batch_size": 16}
            up = client.post(
                "/v1/jobs",
                data={"spec": json.dumps(spec | {"dataset": {"name": "upload"}})},
                files={"dataset": ("d.npz", buf.getvalue())},
            )
            assert up.status_code == 202, up.text
            folder = spec | {"architecture": "lenet5", "dataset": {"name": "folder", "path": "shapes", "input_size": 8}}
            fo = client.post("/v1/jobs", json=folder)
            assert fo.status_code == 202, fo.text
            escape = client.post("/v1/jobs", json=spec | {"dataset": {"name": "folder", "path": "../"}})
            expect(escape, 422, "dataset.path", "inside")
            for r, n_classes, n in ((up, 2, 120), (fo, 2, 24)):
                job = wait_done(client, r.json()["id"])
                assert job["state"] == "succeeded", worker.output()[-3000:]
                rep = client.get(f"/v1/jobs/{job['id']}/result").json()
                ds = rep["dataset"]
                assert ds["num_classes"] == n_classes and ds["train_samples"] + ds["val_samples"] == n
    finally:
        worker.stop()
