"""Inputs as the model takes them (issue 17 item 1): several inputs keyed by the exported program's names, dtypes
kept (int64 token ids stay int64), per-token labels with an ``ignore_index``, each checked against an oracle written
here (the loss against a hand-written masked mean, accuracy by counting), and every misfit a 4xx naming the input,
its dtype and shape, at submit time (:func:`rvsm.prepare.check`, headers only)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from rvsm import inputs
from rvsm.data import evaluate, load_tensor_file
from rvsm.errors import InputError
from rvsm.prepare import check, prepare
from rvsm.train import TrainConfig, _loss_fn, train

V, T, N = 12, 6, 64


class Tagger(nn.Module):
    """Per-token logits from int64 ``input_ids`` and a float ``attention_mask``."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.mix, self.head = nn.Embedding(V, 16), nn.Linear(16, 16), nn.Linear(16, V)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.mix(self.emb(input_ids))) * attention_mask.unsqueeze(-1)
        return self.head(h)


def pt2(model: nn.Module, **kw: torch.Tensor) -> bytes:
    batch = torch.export.Dim("batch", min=2)
    ep = torch.export.export(model, tuple(kw.values()), dynamic_shapes={k: {0: batch} for k in kw})
    buf = io.BytesIO()
    torch.export.save(ep, buf)
    return buf.getvalue()


def lm_data(n: int = N, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Token sequences counting up by one (mod V) from a random start; labels the next token, -100 last."""
    rng = np.random.default_rng(seed)
    ids = (rng.integers(0, V, (n, 1)) + np.arange(T)) % V
    y = np.concatenate([ids[:, 1:], np.full((n, 1), -100)], 1)
    return ids.astype(np.int64), y.astype(np.int64)


SPEC = {
    "kind": "checkpoint",
    "dataset": {"name": "upload"},
    "algorithm": "rvsm",
    "target_sparsity": 0.5,
    "epochs": 3,
    "batch_size": 16,
    "optimizer": "adamw",
    "lr": 0.01,
}


def write(tmp: Path, name: str = "d.npz", **arrays: np.ndarray) -> Path:
    path = tmp / name
    if name.endswith(".npz"):
        np.savez(path, **arrays)
    else:
        save_file({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}, str(path))
    return path


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_keyed_int64_inputs_and_per_token_labels_train(tmp_path: Path, suffix: str) -> None:
    ids, y = lm_data()
    mask = np.ones((N, T), np.float32)
    path = write(tmp_path, "d" + suffix, **{"x.input_ids": ids, "x.attention_mask": mask, "y": y})
    torch.manual_seed(0)
    prep = prepare(
        SPEC,
        checkpoint=pt2(Tagger(), input_ids=torch.tensor(ids[:2]), attention_mask=torch.ones(2, T)),
        dataset_file=path,
    )
    x = prep.data.x_train
    assert isinstance(x, dict) and x["input_ids"].dtype == torch.int64 and x["attention_mask"].dtype == torch.float32
    assert prep.data.y_train.shape[1:] == (T,) and prep.data.num_classes <= V
    result = train(prep.model, prep.data, TrainConfig.from_spec(SPEC | {"params": prep.sparse_names}))
    assert result.score_after > result.score_before  # the next token of a count is learnable
    assert result.sparsity["prunable"] == pytest.approx(0.5, abs=1e-3)


def test_per_token_loss_and_accuracy_leave_the_ignore_index_out() -> None:
    """The loss equals a hand-written mean of -log softmax over the counted tokens; accuracy counts them."""
    g = torch.Generator().manual_seed(0)
    out = torch.randn(5, T, V, generator=g)
    y = torch.randint(0, V, (5, T), generator=g)
    y[:, -1] = -7
    y[0, :3] = -7
    counted = y != -7
    logp = out.log_softmax(-1)
    oracle = -sum(float(logp[i, t, y[i, t]]) for i in range(5) for t in range(T) if counted[i, t]) / int(counted.sum())
    assert float(_loss_fn("classification", -7)(out, y)) == pytest.approx(oracle, rel=1e-6)

    class Fixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.zeros(()))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return out[x.long().flatten()] + self.w

    hits = sum(int(out[i, t].argmax() == y[i, t]) for i in range(5) for t in range(T) if counted[i, t])
    acc = evaluate(Fixed(), torch.arange(5).float().unsqueeze(1), y, ignore_index=-7, batch_size=2)
    assert acc == hits / int(counted.sum())


def test_single_input_may_be_plain_x_or_keyed_by_its_name(tmp_path: Path) -> None:
    ids, y = lm_data()

    class OneInput(Tagger):
        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
            return self.head(torch.relu(self.mix(self.emb(input_ids))))

    blob = pt2(OneInput(), input_ids=torch.tensor(ids[:2]))
    for arrays in ({"x": ids, "y": y}, {"x.input_ids": ids, "y": y}):
        prep = prepare(SPEC, checkpoint=blob, dataset_file=write(tmp_path, **arrays))
        assert inputs.rows(prep.data.x_train) + inputs.rows(prep.data.x_val) == N
        assert next(iter(inputs.sample_shapes(prep.data.x_train).values())) == (T,)


def test_float_images_from_integers_for_a_float_model(tmp_path: Path) -> None:
    """uint8 pixels are kept as read and become float32 only because the model's input is float."""
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 255, (N, 1, 8, 8)).astype(np.uint8), rng.integers(0, 3, N)
    spec = SPEC | {"architecture": "mlp", "optimizer": "sgd", "lr": 0.05, "epochs": 1}
    prep = prepare(spec, dataset_file=write(tmp_path, x=x, y=y))
    assert isinstance(prep.data.x_train, torch.Tensor) and prep.data.x_train.dtype == torch.float32
    assert float(prep.data.x_train.max()) > 1  # cast, not rescaled


TAGGER_BLOB: bytes | None = None


def tagger() -> bytes:
    global TAGGER_BLOB
    if TAGGER_BLOB is None:
        TAGGER_BLOB = pt2(Tagger(), input_ids=torch.zeros(2, T, dtype=torch.long), attention_mask=torch.ones(2, T))
    return TAGGER_BLOB


IDS, Y = lm_data()
MASK = np.ones((N, T), np.float32)


@pytest.mark.parametrize(
    "arrays,words",
    [
        (
            {"x.input_ids": IDS.astype(np.float32), "x.attention_mask": MASK, "y": Y},
            ["input 'input_ids'", "float32", "int64", f"({T},)"],
        ),
        ({"x.input_ids": IDS, "y": Y}, ["['input_ids']", "['input_ids', 'attention_mask']"]),
        ({"x.input_ids": IDS[:, :4], "x.attention_mask": MASK, "y": Y}, ["input 'input_ids'", "(4,)", f"({T},)"]),
        ({"x.input_ids": IDS, "x.attention_mask": MASK[:10], "y": Y}, ["y must have", "x.attention_mask"]),
        ({"x": IDS, "x.input_ids": IDS, "y": Y}, ["'x'", "keyed inputs"]),
        ({"x.input_ids": IDS, "x.attention_mask": MASK, "y": Y[:, :4]}, ["per-token labels y", f"({T}, {V})"]),
        (
            {"x.input_ids": IDS, "x.attention_mask": MASK, "y": Y, "x_val.input_ids": IDS[:8], "y_val": Y[:8]},
            ["x_val / y_val have per-sample shapes"],
        ),
        ({"x.input_ids": IDS, "x.attention_mask": MASK, "y": np.full((N, T), -100)}, ["ignore_index -100"]),
        (
            {"x.input_ids": IDS, "x.attention_mask": MASK, "y": np.where(Y == -100, -100, Y + V)},
            ["per-token labels y", f"{2 * V} classes"],
        ),
    ],
    ids=[
        "float-ids",
        "missing-input",
        "shape",
        "rows",
        "both-forms",
        "label-length",
        "val-inputs",
        "all-ignored",
        "labels-over-vocab",
    ],
)
def test_misfits_are_input_errors_naming_the_input(tmp_path: Path, arrays: dict, words: list[str]) -> None:
    with pytest.raises(InputError) as e:
        check(SPEC, checkpoint=tagger(), dataset_file=write(tmp_path, **arrays))
    assert e.value.field == "dataset"
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_a_built_in_takes_one_input(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        **{"x.a": np.zeros((N, 4), np.float32), "x.b": np.zeros((N, 4), np.float32), "y": np.zeros(N, np.int64)},
    )
    with pytest.raises(InputError, match="takes one input 'x'; the data has"):
        check(SPEC | {"architecture": "mlp"}, dataset_file=path)


def test_loader_keeps_integer_dtypes_and_the_ignore_index(tmp_path: Path) -> None:
    ids32 = IDS.astype(np.int32)
    data = load_tensor_file(write(tmp_path, **{"x.input_ids": ids32, "y": Y}), ignore_index=-100)
    assert isinstance(data.x_train, dict) and data.x_train["input_ids"].dtype == torch.int32
    assert data.num_classes == int(Y[Y != -100].max()) + 1
