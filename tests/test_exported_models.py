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

from rvsm import exported

transformers = pytest.importorskip("transformers")


class Wrapped(nn.Module):
    """A Hugging Face model taking token ids (sent as floats, cast inside) or pixels, returning logits."""

    def __init__(self, model: nn.Module, key: str) -> None:
        super().__init__()
        self.model, self.key = model, key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inputs = {self.key: x.long() if self.key == "input_ids" else x}
        return self.model(**inputs).logits.flatten(1)


class Recurrent(nn.Module):
    def __init__(self, cell: type[nn.Module]) -> None:
        super().__init__()
        self.rnn, self.fc = cell(8, 16, batch_first=True), nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.fc(out[:, -1])


def build(name: str) -> tuple[nn.Module, torch.Tensor]:
    t = transformers
    tokens = torch.randint(0, 100, (4, 12)).float()
    small = {"vocab_size": 100, "max_position_embeddings": 32}
    if name == "bert":
        cfg = t.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                           num_labels=3, **small)  # fmt: skip
        return Wrapped(t.BertForSequenceClassification(cfg), "input_ids"), tokens
    if name == "gpt2":
        cfg = t.GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=2, n_positions=32)
        return Wrapped(t.GPT2LMHeadModel(cfg), "input_ids"), tokens
    if name == "llama":
        cfg = t.LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                            intermediate_size=64, **small)  # fmt: skip
        return Wrapped(t.LlamaForCausalLM(cfg), "input_ids"), tokens
    if name == "vit":
        cfg = t.ViTConfig(image_size=16, patch_size=4, num_channels=1, hidden_size=32, num_hidden_layers=2,
                          num_attention_heads=2, intermediate_size=64, num_labels=10)  # fmt: skip
        return Wrapped(t.ViTForImageClassification(cfg), "pixel_values"), torch.randn(4, 1, 16, 16)
    return Recurrent(nn.LSTM if name == "lstm" else nn.GRU), torch.randn(4, 5, 8)


@pytest.mark.parametrize("name", ["bert", "gpt2", "llama", "vit", "lstm", "gru"])
def test_models_people_bring_pass_the_fences(name: str) -> None:
    torch.manual_seed(0)
    model, x = build(name)
    model.eval()
    program = torch.export.export(model, (x,), dynamic_shapes={"x": {0: torch.export.Dim("batch", min=2)}},
                                  strict=False)  # fmt: skip
    buf = io.BytesIO()
    torch.export.save(program, buf)
    exp = exported.load(buf.getvalue())
    assert exp.input_shape == tuple(x.shape[1:])
    with torch.no_grad():
        want = model(x)
    for batch in (3, 64):
        cost = exported.fake_cost(exp.module, exp.input_shape, batch, training=False)
        assert cost.output_shape == tuple(want.shape[1:]) and cost.allocated > 0
        if name not in ("lstm", "gru"):  # recurrent cells run as one aten op that the FLOP counter does not cost
            assert cost.flops > 0
    exp.module.eval()
    with torch.no_grad():
        assert torch.allclose(exp.module(x), want, atol=1e-5)
