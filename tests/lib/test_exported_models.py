"""Models nobody here wrote, as ``torch.export`` gives them: Hugging Face BERT, GPT-2 (tied embeddings), a
LLaMA-style decoder and ViT built from their configs (random weights, no download), and stock ``nn.LSTM`` /
``nn.GRU``. Each passes the upload fences (``rvsm.archive``: names, operators, tied weights sharing one file),
loads, and has its cost counted under ``FakeTensorMode`` (tensors created inside the forward on a fixed device,
recurrent zero states, attention masks, ``scaled_dot_product_attention``), at batches other than the one it was
exported with; the real forward of the loaded module equals the original's."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from rvsm import exported, inputs

transformers = pytest.importorskip("transformers")


class Classifier(nn.Module):
    """A Hugging Face classifier as people export it: BERT on ``input_ids`` and ``attention_mask`` (int64), ViT on
    ``pixel_values``; returns the logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


class Vision(Classifier):
    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.model(pixel_values=pixel_values).logits


class CausalLM(Classifier):
    """GPT-2 or a LLaMA-style decoder on int64 ``input_ids``, returning per-token logits ``(N, T, vocab)``."""

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.model(input_ids=input_ids).logits


class Recurrent(nn.Module):
    def __init__(self, cell: type[nn.Module]) -> None:
        super().__init__()
        self.rnn, self.fc = cell(8, 16, batch_first=True), nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.fc(out[:, -1])


def build(name: str) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """The model and example inputs by name (the forward's argument names)."""
    t = transformers
    ids = torch.randint(0, 100, (4, 12))
    small = {"vocab_size": 100, "max_position_embeddings": 32}
    if name == "bert":
        cfg = t.BertConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_labels=3, **small
        )
        mask = torch.ones(4, 12, dtype=torch.long)
        mask[0, 8:] = 0
        return Classifier(t.BertForSequenceClassification(cfg)), {"input_ids": ids, "attention_mask": mask}
    if name == "gpt2":
        cfg = t.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=2, n_positions=32)
        return CausalLM(t.GPT2LMHeadModel(cfg)), {"input_ids": ids}
    if name == "llama":
        cfg = t.LlamaConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            intermediate_size=64,
            **small,
        )
        return CausalLM(t.LlamaForCausalLM(cfg)), {"input_ids": ids}
    if name == "vit":
        cfg = t.ViTConfig(
            image_size=16,
            patch_size=4,
            num_channels=1,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            num_labels=10,
        )
        return Vision(t.ViTForImageClassification(cfg)), {"pixel_values": torch.randn(4, 1, 16, 16)}
    return Recurrent(nn.LSTM if name == "lstm" else nn.GRU), {"x": torch.randn(4, 5, 8)}


def export(model: nn.Module, inputs: dict[str, torch.Tensor]) -> bytes:
    """``model`` exported with a dynamic batch, its inputs passed positionally, as a ``.pt2``."""
    batch = torch.export.Dim("batch", min=2)
    program = torch.export.export(
        model, tuple(inputs.values()), dynamic_shapes={k: {0: batch} for k in inputs}, strict=False
    )
    buf = io.BytesIO()
    torch.export.save(program, buf)
    return buf.getvalue()


@pytest.mark.parametrize("name", ["bert", "gpt2", "llama", "vit", "lstm", "gru"])
def test_models_people_bring_pass_the_fences(name: str) -> None:
    torch.manual_seed(0)
    model, x = build(name)
    model.eval()
    exp = exported.load(export(model, x))
    assert {k: (shape, dtype) for k, (shape, dtype) in exp.inputs.items()} == {
        k: (tuple(v.shape[1:]), v.dtype) for k, v in x.items()
    }
    with torch.no_grad():
        want = model(**x)
    for batch in (3, 64):
        cost = exported.fake_cost(exp.module, exp.inputs, batch, training=False)
        assert cost.output_shape == tuple(want.shape[1:]) and cost.allocated > 0
        if name not in ("lstm", "gru"):  # recurrent cells run as one aten op that the FLOP counter does not cost
            assert cost.flops > 0
    exp.module.eval()
    with torch.no_grad():
        assert torch.allclose(inputs.call(exp.module, x), want, atol=1e-5)


def test_inputs_exported_as_keywords_are_fed_by_name() -> None:
    """BERT exported with keyword inputs (``export(model, (), kwargs)``) loads and is fed by input name, like the
    positional export; the archive's names, not their order in the data file, decide which tensor goes where."""
    torch.manual_seed(0)
    model, x = build("bert")
    model.eval()
    batch = torch.export.Dim("batch", min=2)
    program = torch.export.export(model, (), dict(x), dynamic_shapes={k: {0: batch} for k in x}, strict=False)
    buf = io.BytesIO()
    torch.export.save(program, buf)
    exp = exported.load(buf.getvalue())
    assert list(exp.inputs) == ["input_ids", "attention_mask"]
    reordered = {"attention_mask": x["attention_mask"], "input_ids": x["input_ids"]}
    exp.module.eval()
    with torch.no_grad():
        assert torch.allclose(inputs.call(exp.module, reordered), model(**x), atol=1e-5)
    cost = exported.fake_cost(exp.module, exp.inputs, 5)
    assert cost.output_shape == (3,)
