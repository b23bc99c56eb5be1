"""Transformers: RVSM (target sparsity) against magnitude pruning and the gradual magnitude pruning a user would
write with ``torch.nn.utils.prune``, at the same sparsity, on the same tensors and with the same epoch budget, for
three tiny Hugging Face models built from their configs (random weights, no download): a BERT classifier
(``input_ids`` + ``attention_mask``), a GPT-2 language model (tied embeddings, next-token loss, per-token labels)
and a ViT on scikit-learn's digits. Each is exported with ``torch.export`` (dynamic batch) and loaded the way the
service loads it (:func:`rvsm.prepare.prepare`). Written into docs/benchmarks.md.

    python benchmarks/bench_transformers.py                 # 3 seeds, targets 0.5 / 0.8 (about 10 min, one thread)
    python benchmarks/bench_transformers.py --seeds 0 --models vit --epochs 4 --no-doc     # a quick look

Every method trains ``--epochs`` epochs in all, with AdamW at the service's defaults (lr 1e-3, weight decay 0.01,
the default batch size, cosine schedule): RVSM (``algorithm: rvsm``, ``target_sparsity``, service defaults: warm-up,
ramp, masked tail) and magnitude pruning (``algorithm: magnitude``, service defaults: gradual) train them all;
GMP is the peer a user would write (benchmarks/_gmp.py): ``prune.global_unstructured`` (L1) on the tensors the
service prunes (``prepared.sparse_names``), raised every step on the cubic schedule of Zhu and Gupta over the same
warm-up and ramp, then trained with the masks held for the rest. Dense AdamW is the reference. Runs are
interleaved: each seed runs every method of every model before the next seed.
Cells are the mean over seeds and the range.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from _gmp import gmp_train  # noqa: E402
from _report import machine, write_block  # noqa: E402

from rvsm.data import TensorData, digits, evaluate  # noqa: E402
from rvsm.prepare import prepare  # noqa: E402
from rvsm.train import TrainConfig, sparsity_report, train  # noqa: E402

DOC = ROOT / "docs" / "benchmarks.md"
VOCAB, SEQ, N_TRAIN, N_VAL = 50, 16, 1536, 512
IGNORE = -100
METHODS = ("rvsm", "magnitude", "gmp")

transformers.logging.set_verbosity_error()  # GPT-2's config complains of its 50256 bos / eos ids at vocab 50


# ---------------------------------------------------------------------------------------------- models and data
class Classifier(nn.Module):
    """A Hugging Face model as a user would export it: named tensor inputs in, the logits tensor out."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model


class BertIds(Classifier):
    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


class Gpt2Ids(Classifier):
    def forward(self, input_ids: Tensor) -> Tensor:
        return self.model(input_ids=input_ids).logits  # (N, T, V): a next-token prediction at every position


class VitPixels(Classifier):
    def forward(self, pixel_values: Tensor) -> Tensor:
        return self.model(pixel_values=pixel_values).logits


def bert() -> nn.Module:
    cfg = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=SEQ,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    cfg.num_labels = 2
    return BertIds(transformers.BertForSequenceClassification(cfg))


def gpt2() -> nn.Module:
    cfg = transformers.GPT2Config(
        vocab_size=VOCAB,
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_positions=SEQ,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return Gpt2Ids(transformers.GPT2LMHeadModel(cfg))


def vit() -> nn.Module:
    cfg = transformers.ViTConfig(
        image_size=8,
        patch_size=2,
        num_channels=1,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
    )
    cfg.num_labels = 10
    return VitPixels(transformers.ViTForImageClassification(cfg))


def order_task(n: int, g: torch.Generator) -> tuple[dict[str, Tensor], Tensor]:
    """BERT: ``[CLS]`` then 7 to 15 random tokens (ids 4..49) holding token 2 and token 3 once each, padded (id 0,
    mask 0) to 16; the label is whether 2 comes before 3. Needs positions and attention, not a bag of tokens."""
    ids, mask = torch.zeros(n, SEQ, dtype=torch.long), torch.zeros(n, SEQ, dtype=torch.long)
    y = torch.zeros(n, dtype=torch.long)
    for r in range(n):
        length = int(torch.randint(8, SEQ + 1, (1,), generator=g))
        body = torch.randint(4, VOCAB, (length - 1,), generator=g)
        i, j = torch.randperm(length - 1, generator=g)[:2].tolist()
        body[i], body[j] = 2, 3
        ids[r, 0], ids[r, 1:length], mask[r, :length], y[r] = 1, body, 1, int(i < j)
    return {"input_ids": ids, "attention_mask": mask}, y


def counting_task(n: int, g: torch.Generator) -> tuple[dict[str, Tensor], Tensor]:
    """GPT-2: ``x_t = (s + k t) mod 50`` from a random start ``s``, step ``k`` in {1, 2} per sequence, each token
    after the first replaced by a random one with probability 0.1. Labels are the next token (``y[:, t] =
    x[:, t + 1]``), the last position ignored (-100)."""
    start, step = torch.randint(0, VOCAB, (n, 1), generator=g), torch.randint(1, 3, (n, 1), generator=g)
    x = (start + step * torch.arange(SEQ)) % VOCAB
    noise = torch.rand(n, SEQ, generator=g) < 0.1
    noise[:, 0] = False
    x = torch.where(noise, torch.randint(0, VOCAB, (n, SEQ), generator=g), x)
    y = torch.full_like(x, IGNORE)
    y[:, :-1] = x[:, 1:]
    return {"input_ids": x}, y


def token_npz(task: Callable[[int, torch.Generator], tuple[dict[str, Tensor], Tensor]]) -> bytes:
    """An uploaded ``.npz`` with the inputs under ``x.<name>`` / ``x_val.<name>`` (int64 token ids)."""
    g = torch.Generator().manual_seed(0)
    x, y = task(N_TRAIN, g)
    xv, yv = task(N_VAL, g)
    arrays: dict[str, Any] = {f"x.{k}": v.numpy() for k, v in x.items()} | {"y": y.numpy(), "y_val": yv.numpy()}
    arrays |= {f"x_val.{k}": v.numpy() for k, v in xv.items()}
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def digits_npz() -> bytes:
    d = digits(seed=0)  # (N, 1, 8, 8) in [0, 1], the split the other digits benchmarks use
    assert isinstance(d.x_train, Tensor) and isinstance(d.x_val, Tensor)
    buf = io.BytesIO()
    np.savez(buf, x=d.x_train.numpy(), y=d.y_train.numpy(), x_val=d.x_val.numpy(), y_val=d.y_val.numpy())
    return buf.getvalue()


@dataclass(frozen=True)
class Case:
    build: Callable[[], nn.Module]
    example: Callable[[], dict[str, Tensor]]  # one batch of inputs by name, for torch.export
    data: Callable[[], bytes]


CASES = {
    "bert": Case(bert, lambda: order_task(4, torch.Generator().manual_seed(1))[0], lambda: token_npz(order_task)),
    "gpt2": Case(gpt2, lambda: counting_task(4, torch.Generator().manual_seed(1))[0], lambda: token_npz(counting_task)),
    "vit": Case(vit, lambda: {"pixel_values": torch.rand(4, 1, 8, 8)}, digits_npz),
}


def export(module: nn.Module, example: dict[str, Tensor]) -> bytes:
    """``torch.export`` in eval mode with one dynamic batch dimension shared by every input, as a user would."""
    module.eval()
    batch = torch.export.Dim("batch", min=2)
    program = torch.export.export(
        module, tuple(example.values()), dynamic_shapes={k: {0: batch} for k in example}, strict=False
    )
    buf = io.BytesIO()
    torch.export.save(program, buf)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------- the service's runs
def spec_for(method: str, target: float | None, epochs: int, seed: int) -> dict:
    spec: dict = {
        "kind": "checkpoint",
        "seed": seed,
        "epochs": epochs,
        "optimizer": "adamw",
        "dataset": {"name": "upload", "ignore_index": IGNORE},
    }
    per_method: dict[str, dict] = {
        "dense": {"algorithm": "sgd"},
        "gmp": {"algorithm": "sgd"},  # only prepared by the service; trained by gmp_train below
        "rvsm": {"algorithm": "rvsm", "target_sparsity": target},
        "magnitude": {"algorithm": "magnitude", "target_sparsity": target},
    }
    return spec | per_method[method]


def score(model: nn.Module, data: TensorData) -> float:
    """Validation accuracy; per token, over the labels that are not ``ignore_index``."""
    return evaluate(model, data.x_val, data.y_val, task="classification", ignore_index=data.ignore_index)


def one_run(blob: bytes, npz: Path, seed: int, method: str, target: float | None, epochs: int) -> dict:
    torch.manual_seed(seed)
    spec = spec_for(method, target, epochs, seed)
    prep = prepare(spec, checkpoint=blob, dataset_file=npz)
    t0 = time.perf_counter()
    if method == "gmp":
        assert target is not None
        acc, sparsity = gmp_train(prep, TrainConfig.from_spec(spec | {"algorithm": "rvsm", "target_sparsity": target}))
    else:
        r = train(prep.model, prep.data, TrainConfig.from_spec(spec | {"params": prep.sparse_names}))
        acc, sparsity = r.score_after, r.sparsity["prunable"]
    return {
        "accuracy": acc,
        "sparsity": sparsity,
        "seconds": time.perf_counter() - t0,
        "pruned": (
            len(prep.sparse_names),
            sparsity_report(prep.model.state_dict(), prep.sparse_names)["prunable_parameters"],
        ),
    }


# ---------------------------------------------------------------------------------------------- the table
def cell(runs: list[dict], key: str = "accuracy") -> str:
    accs = [r[key] for r in runs]
    return f"{statistics.mean(accs):.4f} ({min(accs):.4f}–{max(accs):.4f})"


def sparsities(runs: list[dict]) -> str:
    sp = [r["sparsity"] for r in runs]
    return f"{min(sp):.4f}" if f"{min(sp):.4f}" == f"{max(sp):.4f}" else f"{min(sp):.4f}–{max(sp):.4f}"


def majority(npz: Path) -> float:
    """What always answering the most frequent validation label scores (per token for GPT-2)."""
    y = np.load(npz)["y_val"].ravel()
    y = y[y != IGNORE]
    return float(np.bincount(y).max() / len(y))


def table(args: argparse.Namespace, results: dict, info: dict, seconds: float) -> str:
    lines = [
        f"`python benchmarks/bench_transformers.py --seeds {' '.join(map(str, args.seeds))} --targets "
        f"{' '.join(map(str, args.targets))} --epochs {args.epochs} --models {' '.join(args.models)} --threads "
        f"{args.threads}` on "
        f"{machine()}; {seconds:.0f} s in all.",
        "",
        f"Validation accuracy (GPT-2: next-token accuracy over the positions with a label): mean over seeds "
        f"{args.seeds} (min–max); {args.epochs} epochs in all for every method, AdamW at the service's defaults. "
        "Achieved sparsity: zeros over the pruned set, min–max over seeds, "
        "RVSM / magnitude / GMP.",
        "",
        "| model | dense AdamW | target | RVSM ℓ0 target | magnitude (gradual) | GMP, torch.nn.utils.prune "
        "| achieved sparsity |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in args.models:
        dense = cell(results[(name, "dense", None)])
        for t in args.targets:
            runs = [results[(name, m, t)] for m in METHODS]
            accs = " | ".join(cell(r) for r in runs)
            sp = " / ".join(sparsities(results[(name, m, t)]) for m in METHODS)
            lines.append(f"| {name} | {dense} | {t} | {accs} | {sp} |")
    lines += [
        "",
        "Pruned set (`prepared.sparse_names`, the same tensors for every method) and the majority-label "
        "accuracy of each validation set: "
        + "; ".join(
            f"{n}: {info[n]['pruned'][0]} tensors, {info[n]['pruned'][1]:,} weights, majority {info[n]['majority']:.4f}"
            for n in args.models
        )
        + ".",
    ]
    return "\n".join(lines)


def run_all(args: argparse.Namespace, tmp: Path) -> tuple[dict, dict]:
    results: dict = {}
    info: dict = {}
    for name in args.models:
        (tmp / f"{name}.npz").write_bytes(CASES[name].data())
        info[name] = {"majority": majority(tmp / f"{name}.npz")}
    for seed in args.seeds:  # interleaved: every method of every model for this seed, then the next seed
        for name in args.models:
            torch.manual_seed(seed)  # the initial weights, then frozen into the .pt2 every method of this seed loads
            blob = export(CASES[name].build(), CASES[name].example())
            plan = [("dense", None)] + [(m, t) for t in args.targets for m in METHODS]
            for method, target in plan:
                r = one_run(blob, tmp / f"{name}.npz", seed, method, target, args.epochs)
                results.setdefault((name, method, target), []).append(r)
                info[name]["pruned"] = r["pruned"]
                print(
                    name,
                    seed,
                    method,
                    target,
                    f"{r['accuracy']:.4f} sp {r['sparsity']:.4f} {r['seconds']:.1f}s",
                    flush=True,
                )
    return results, info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.8])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--models", nargs="+", choices=sorted(CASES), default=["bert", "gpt2", "vit"])
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: steady on a shared machine)")
    ap.add_argument("--no-doc", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        results, info = run_all(args, Path(tmp))
    body = table(args, results, info, time.perf_counter() - t0)
    print(body)
    if not args.no_doc:
        write_block(DOC, "transformers-targets", body)


if __name__ == "__main__":
    main()
