"""Models nobody here wrote, through the API and a real worker (issue 17): stock ``nn.LSTM`` / ``nn.GRU``, Hugging
Face BERT, ViT, a LLaMA-style decoder and GPT-2 with tied embeddings built from their configs (token ids sent as
floats and cast inside),
trained a little here, exported with a dynamic batch, pruned to 0.5 and 0.8. The pruned set holds every attention,
MLP and recurrent weight matrix; zeros are exact to one entry per tensor; ``model.safetensors`` loads strictly into
the test's own module; ``model.pt2`` computes the same function; held-out accuracy equals the report's."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load as st_load

from tests import service_helpers as helpers
from tests.service_helpers import Worker, service_env, unique_queue, wait_for
from tests.test_exported_models import build

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("models")
    queue = unique_queue("models")
    worker = Worker(service_env(tmp, queue=queue), queue, tmp / "worker.log")
    with helpers.make_client(tmp, queue, max_upload_bytes=8_000_000) as client:
        yield client, worker
    worker.stop()


def task(name: str, n: int = 240) -> tuple[torch.Tensor, torch.Tensor]:
    """Data each model can learn a little: token sequences labelled by whether token 7 occurs (and a third class
    for token 3 before it), images and sequences labelled by the sign pattern of their mean."""
    g = torch.Generator().manual_seed(1)
    if name in ("bert", "llama", "gpt2"):
        x = torch.randint(0, 100, (n, 12), generator=g)
        y = (x == 7).any(1).long() + (x[:, :6] == 3).any(1).long()
        return x.float(), y.clamp(max=2)
    shape = (n, 1, 16, 16) if name == "vit" else (n, 5, 8)
    x = torch.randn(shape, generator=g)
    m = x.flatten(1)
    y = (m[:, 0] > 0).long() + (m[:, 1] > 0).long()
    return x, y


def trained(name: str, x: torch.Tensor, y: torch.Tensor) -> torch.nn.Module:
    torch.manual_seed(0)
    model, _ = build(name)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    model.train()
    for i in range(30):
        idx = torch.arange(i * 8, i * 8 + 32) % len(x)
        out = model(x[idx])[:, :3]
        loss = torch.nn.functional.cross_entropy(out, y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def expected_matrices(model: torch.nn.Module) -> set[str]:
    """Every 2-D weight a matmul-like operator consumes: all but embeddings and ViT's class token / positions."""
    skip = ("embed", "wte", "wpe", "cls_token", "position")
    return {n for n, p in model.named_parameters() if p.dim() >= 2 and not any(s in n for s in skip)}


@pytest.mark.parametrize("target", [0.5, 0.8])
@pytest.mark.parametrize("name", ["lstm", "gru", "bert", "vit", "llama", "gpt2"])
def test_models_people_bring_prune_to_target(stack, name, target):
    client, worker = stack
    x, y = task(name)
    model = trained(name, x, y)
    program = torch.export.export(model, (x[:4],), dynamic_shapes={"x": {0: torch.export.Dim("batch", min=2)}},
                                  strict=False)  # fmt: skip
    buf = io.BytesIO()
    torch.export.save(program, buf)
    data = io.BytesIO()
    np.savez(data, x=x[:180].numpy(), y=y[:180].numpy(), x_val=x[180:].numpy(), y_val=y[180:].numpy())
    spec = {"kind": "checkpoint", "dataset": {"name": "upload"}, "algorithm": "rvsm", "target_sparsity": target,
            "epochs": 2, "batch_size": 16, "lr": 0.01}  # fmt: skip
    files = {"checkpoint": ("m.pt2", buf.getvalue()), "dataset": ("d.npz", data.getvalue())}
    r = client.post("/v1/jobs", data={"spec": json.dumps(spec)}, files=files)
    assert r.status_code == 202, r.text

    def done():
        j = client.get(f"/v1/jobs/{r.json()['id']}").json()
        return j if j["state"] in ("succeeded", "failed") else None

    job = wait_for(done, timeout=300, what=name)
    assert job["state"] == "succeeded", (job["error"], worker.output()[-3000:])
    report = client.get(f"/v1/jobs/{job['id']}/result").json()
    names = report["sparsity"]["prunable_names"]
    assert expected_matrices(model) <= set(names), sorted(expected_matrices(model) - set(names))
    url = f"/v1/jobs/{job['id']}/artifacts"
    artifacts = {n: client.get(f"{url}/{n}").content for n in ("model.safetensors", "model.pt2")}
    state = st_load(artifacts["model.safetensors"])
    total = sum(state[k].numel() for k in names)
    zeros = sum(int((state[k] == 0).sum()) for k in names)
    assert abs(zeros - math.floor(target * total)) <= len(names), (zeros, total)

    if name == "gpt2":  # tied: pruned once with one mask, written under both names, still one tensor once loaded
        head, table = state["model.lm_head.weight"], state["model.transformer.wte.weight"]
        assert torch.equal(head, table) and "model.transformer.wte.weight" in names
    model.load_state_dict(state, strict=True)  # the test's own module, every key
    if name == "gpt2":
        assert model.model.lm_head.weight is model.model.transformer.wte.weight
    model.eval()
    with torch.no_grad():
        mine = model(x[180:])
        theirs = torch.export.load(io.BytesIO(artifacts["model.pt2"])).module()(x[180:])
    assert torch.allclose(mine, theirs, atol=1e-5)
    acc = int((mine.argmax(1) == y[180:]).sum()) / len(y[180:])
    assert acc == pytest.approx(report["accuracy_after"], abs=1e-9)
