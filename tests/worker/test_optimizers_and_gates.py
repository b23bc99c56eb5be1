"""Issue 17 items 6 and 7: a LightningModule's ``model.`` prefix, the ``optimizer`` field (``adamw`` through every
algorithm that trains) and the CLI's ``--min-sparsity`` gate at exactly the job's target."""

from __future__ import annotations

import argparse
import io
import json
import math

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from rvsm import data as rdata
from rvsm import models
from rvsm.checkpoints import unwrap
from rvsm.errors import InputError
from rvsm.train import TrainConfig, train
from service import cli
from tests.service_helpers import submit_job, wait_done

LENET = {"in_channels": 1, "input_size": 8, "num_classes": 10}


def finished(client, job_id: str, worker) -> dict:
    job = wait_done(client, job_id)
    assert job["state"] == "succeeded", (job["error"], worker.output()[-2000:])
    return job


# ----------------------------------------------------------------------------- item 6: Lightning's model. prefix
@pytest.fixture(scope="module")
def trained_lenet() -> tuple[dict[str, torch.Tensor], float]:
    torch.manual_seed(0)
    m = models.build("lenet5", **LENET)
    res = train(m, rdata.digits(), TrainConfig(algorithm="sgd", epochs=10))
    return {k: v.detach().clone() for k, v in m.state_dict().items()}, res.score_after


def lightning(sd: dict[str, torch.Tensor]) -> dict:
    """What ``Trainer.save_checkpoint`` writes for a LightningModule holding the net as ``self.model``."""
    return {
        "state_dict": {f"model.{k}": v for k, v in sd.items()},
        "epoch": 3,
        "global_step": 120,
        "pytorch-lightning_version": "2.4.0",
        "optimizer_states": [],
        "lr_schedulers": [],
        "hyper_parameters": {"lr": 0.05},
        "loops": {},
        "callbacks": {},
    }


def test_unwrap_strips_the_lightning_prefix_only_when_every_key_has_it():
    t = torch.ones(2)
    got = unwrap(lightning({"features.0.weight": t, "classifier.0.bias": t}))
    assert set(got.tensors) == {"features.0.weight", "classifier.0.bias"}
    assert any("unwrapped {'state_dict'" in n for n in got.normalised)
    assert any("prefix 'model.'" in n and "LightningModule" in n for n in got.normalised)
    both = unwrap({"model._orig_mod.a.weight": t, "model._orig_mod.b.weight": t})  # compiled inside the module
    assert set(both.tensors) == {"a.weight", "b.weight"} and len(both.normalised) == 2
    partly = unwrap({"model.a.weight": t, "criterion.weight": t})  # ambiguous: left as it is
    assert set(partly.tensors) == {"model.a.weight", "criterion.weight"} and partly.normalised == []


@pytest.mark.parametrize("form", ["pt", "safetensors"])
def test_a_lightning_checkpoint_of_a_builtin_is_accepted_and_loads(stack, trained_lenet, form):
    client, worker, _ = stack
    sd, score = trained_lenet
    if form == "pt":
        buf = io.BytesIO()
        torch.save(lightning(sd), buf)
        blob, name = buf.getvalue(), "last.ckpt.pt"
    else:
        blob, name = st_save({f"model.{k}": v.contiguous() for k, v in sd.items()}), "model.safetensors"
    spec = {
        "kind": "checkpoint",
        "architecture": "lenet5",
        "algorithm": "magnitude",
        "target_sparsity": 0.5,
        "epochs": 1,
        "lr": 0.01,
    }
    r = submit_job(client, spec, checkpoint=(name, blob))
    assert r.status_code == 202, r.text
    job = finished(client, r.json()["id"], worker)
    report = client.get(f"/v1/jobs/{job['id']}/result").json()
    assert any("prefix 'model.'" in n for n in report["normalised"]), report["normalised"]
    assert report["from_checkpoint"] and score > 0.5
    assert report["accuracy_before"] == pytest.approx(score)  # the uploaded weights, loaded as they were trained
    out = st_load(client.get(f"/v1/jobs/{job['id']}/artifacts/model.safetensors").content)
    models.build("lenet5", **LENET).load_state_dict(out)  # strictly, under the network's own names


def test_a_partly_prefixed_state_dict_keeps_the_key_error(stack, trained_lenet):
    client = stack.client
    sd = {(f"model.{k}" if k.startswith("features") else k): v for k, v in trained_lenet[0].items()}
    buf = io.BytesIO()
    torch.save({"state_dict": sd, "epoch": 1}, buf)
    spec = {"kind": "checkpoint", "architecture": "lenet5", "algorithm": "sgd", "epochs": 1}
    r = submit_job(client, spec, checkpoint=("m.pt", buf.getvalue()))
    assert r.status_code == 422, r.text
    msg = r.json()["message"]
    assert "checkpoint" in msg and "missing keys" in msg and "unexpected keys ['model.features" in msg


# ----------------------------------------------------------------------------- item 7a: optimizer
def test_optimizer_config_defaults_and_validation():
    sgd = TrainConfig()
    assert (sgd.optimizer, sgd.lr, sgd.momentum, sgd.weight_decay) == ("sgd", 0.05, 0.9, 5e-4)
    adamw = TrainConfig(optimizer="adamw")
    assert (adamw.lr, adamw.momentum, adamw.weight_decay) == (1e-3, None, 1e-2)
    assert TrainConfig(optimizer="adamw", lr=3e-4, weight_decay=0.0).lr == 3e-4
    with pytest.raises(InputError, match="optimizer.*'adam'") as e:
        TrainConfig(optimizer="adam")
    assert e.value.field == "optimizer"
    with pytest.raises(InputError, match="momentum") as e:
        TrainConfig(optimizer="adamw", momentum=0.9)
    assert e.value.field == "momentum"


CASES = {
    "sgd": ("lenet5", {}),
    "rvsm": ("lenet5", {"target_sparsity": 0.5}),
    "rvsm_lambda": ("lenet5", {"algorithm": "rvsm", "lam": 0.05}),
    "rvscgd": ("lenet5_binary", {"target_sparsity": 0.5}),
    "admm": ("lenet5", {"target_sparsity": 0.5, "finetune_epochs": 1}),
    "magnitude": ("lenet5", {"target_sparsity": 0.5, "finetune_epochs": 1}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_adamw_is_the_optimizer_every_algorithm_steps_with(case, monkeypatch):
    arch, extra = CASES[case]
    made: list[torch.optim.Optimizer] = []

    class Recorded(torch.optim.AdamW):
        def __init__(self, *a, **kw) -> None:
            super().__init__(*a, **kw)
            made.append(self)

    def no_sgd(*a, **kw):
        raise AssertionError("SGD built with optimizer 'adamw'")

    monkeypatch.setattr(torch.optim, "AdamW", Recorded)
    monkeypatch.setattr(torch.optim, "SGD", no_sgd)
    torch.manual_seed(0)
    model = models.build(arch, **LENET)
    cfg = TrainConfig(**({"algorithm": case} | extra | {"optimizer": "adamw", "lr": 1e-2, "epochs": 3, "seed": 0}))
    res = train(model, rdata.digits(), cfg)
    assert made and all(type(o) is Recorded for o in made)
    assert len(made) == (2 if cfg.finetune_epochs else 1)  # the fine-tuning phase steps with AdamW too
    stepped = made[0].state[next(iter(model.parameters()))]
    assert "exp_avg" in stepped and "exp_avg_sq" in stepped  # AdamW's moments: it really stepped
    assert made[0].defaults["lr"] == 1e-2 and made[0].defaults["weight_decay"] == 1e-2  # AdamW's own decay
    assert res.config["optimizer"] == "adamw" and res.config["momentum"] is None
    assert all(math.isfinite(p["train_loss"]) for p in res.trace)
    if arch != "lenet5_binary":  # a binarized net needs more than 3 epochs; the others learn (chance is 0.1)
        assert res.score_dense > 0.3
    if cfg.target is not None:
        assert res.sparsity["prunable"] == pytest.approx(0.5, abs=1e-3)


def test_adamw_through_the_api_and_its_422s(stack):
    client, worker, _ = stack
    base = {
        "kind": "checkpoint",
        "architecture": "mlp",
        "hidden": [32],
        "algorithm": "rvsm",
        "target_sparsity": 0.5,
        "epochs": 2,
    }
    r = client.post("/v1/jobs", json=base | {"optimizer": "adam"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "optimizer", r.text
    r = client.post("/v1/jobs", json=base | {"optimizer": "adamw", "momentum": 0.9})
    assert r.status_code == 422 and r.json()["message"].startswith("momentum"), r.text
    r = client.post("/v1/jobs", json=base | {"optimizer": "adamw"})
    assert r.status_code == 202, r.text
    job = finished(client, r.json()["id"], worker)
    assert job["spec"]["optimizer"] == "adamw" and "lr" not in job["spec"]
    report = client.get(f"/v1/jobs/{job['id']}/result").json()
    assert report["config"]["optimizer"] == "adamw" and report["config"]["lr"] == 1e-3
    assert report["sparsity"]["prunable"] == pytest.approx(0.5, abs=1e-3)
    sgd = client.post("/v1/jobs", json=base).json()  # no optimizer: today's SGD, its lr
    job = finished(client, sgd["id"], worker)
    cfg = client.get(f"/v1/jobs/{job['id']}/result").json()["config"]
    assert (cfg["optimizer"], cfg["lr"], cfg["momentum"], cfg["weight_decay"]) == ("sgd", 0.05, 0.9, 5e-4)


# ----------------------------------------------------------------------------- item 7b: the --min-sparsity gate
def _report(numels: list[int], zeros: list[int], scope: str = "global") -> dict:
    layers = {f"t{i}": {"numel": n, "zeros": z} for i, (n, z) in enumerate(zip(numels, zeros, strict=True))}
    return {"sparsity_scope": scope, "sparsity": {"layers": layers, "prunable_names": list(layers)}}


def test_reaches_sparsity_counts_whole_entries():
    # 2368 entries at 0.8: floor(1894.4) = 1894 zeros = 0.79983 < 0.8, which met the target
    assert cli.reaches_sparsity(_report([2048, 320], [1700, 194]), 0.8)
    assert not cli.reaches_sparsity(_report([2048, 320], [1700, 193]), 0.8)  # one entry short
    assert not cli.reaches_sparsity(_report([2048, 320], [1700, 194]), 0.81)
    # per tensor ("layer"): floor(0.8 * 7) + floor(0.8 * 9) = 5 + 7
    assert cli.reaches_sparsity(_report([7, 9], [5, 7], "layer"), 0.8)
    assert not cli.reaches_sparsity(_report([7, 9], [5, 6], "layer"), 0.8)
    assert not cli.reaches_sparsity({}, 0.8) and not cli.reaches_sparsity(_report([10], [10]), 1.0)


def _gate_args(q: float) -> argparse.Namespace:
    return argparse.Namespace(
        max_theta_w=None, min_zeros=None, min_sparsity=q, max_accuracy_drop=None, max_loss_increase=None
    )


def test_min_sparsity_at_the_target_passes_from_the_cli(stack, tmp_path, monkeypatch, capsys):
    """The issue's case: mlp [32] on digits has 2368 pruned entries; target 0.8 gives 1894 zeros = 0.79983."""
    client, worker, _ = stack

    class ViaTestClient:  # the CLI's own code path against the real API (and worker)
        def __init__(self, _args: argparse.Namespace) -> None:
            pass

        def call(self, method: str, path: str, **kw):  # noqa: ANN202
            r = client.request(method, path, **kw)
            assert r.status_code < 400, r.text
            return r

    monkeypatch.setattr(cli, "_Client", ViaTestClient)
    spec = tmp_path / "spec.json"
    spec.write_text(
        json.dumps(
            {
                "kind": "checkpoint",
                "architecture": "mlp",
                "hidden": [32],
                "algorithm": "magnitude",
                "target_sparsity": 0.8,
                "epochs": 1,
                "finetune_epochs": 1,
            }
        )
    )
    rc = cli.main(["submit", str(spec), "--wait", "--poll", "0.2", "--quiet", "--min-sparsity", "0.8"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["gates_failed"] == [], (out["gates_failed"], out["summary"])
    assert out["summary"]["sparsity"] < 0.8  # the hair under 0.8 that used to fail the gate
    report = client.get(f"/v1/jobs/{out['id']}/result").json()
    assert report["sparsity"]["target_reachable"] == out["summary"]["sparsity"] == math.floor(0.8 * 2368) / 2368
    job = client.get(f"/v1/jobs/{out['id']}").json()
    assert cli._gates(_gate_args(0.8), job, lambda: report) == []
    failed = cli._gates(_gate_args(0.81), job, lambda: report)  # asking for more than the job has still fails
    assert len(failed) == 1 and "--min-sparsity 0.81" in failed[0]
    assert cli._gates(_gate_args(0.8), job) != []  # no report to count in: the plain comparison
