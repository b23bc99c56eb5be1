"""Training a network sparse: RVSM / RVSCGD and the baselines on one loop, resumable at epoch boundaries.

Algorithms (SPEC §4, deep nets):

- ``sgd``: plain SGD (momentum, weight decay) for ``epochs``; the dense reference.
- ``rvsm``: SGD on the task loss plus the ``beta (w - u)`` pull, ``u = T_mu(w)`` every step
  (:class:`rvsm.optim.RVSM`), for ``epochs``; the exported model carries ``u``.
- ``rvscgd``: the same on a binarized architecture (straight-through activations, seed 001 §6).
- ``magnitude``: dense SGD for ``epochs``, one-shot magnitude pruning of each chosen tensor to
  ``sparsity``, then ``finetune_epochs`` of SGD with the pruned entries held at zero.
- ``admm``: ADMM (``rho = beta``, ``z`` = each tensor's top ``1 - sparsity`` magnitudes, dual update every
  epoch) for ``epochs``, then the same pruning and fine-tuning.

``callback(event)`` is called after every epoch with the epoch's numbers and ``event["state"]``, a
resumable state (pass it back as ``resume=`` to continue after that epoch: same data order, same
result). It references the live model and optimizer tensors: save or copy it inside the callback.
``step_callback(step)`` is called after every optimizer step and may raise to stop.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn

from .data import TensorData, accuracy
from .models import default_sparse_parameters
from .optim import ADMM, RVSM, apply_masks_, magnitude_mask, split_parameters
from .prox import PENALTIES

TRAIN_ALGORITHMS = ("sgd", "rvsm", "rvscgd", "admm", "magnitude")
SCHEDULES = ("constant", "step", "cosine")


@dataclass(kw_only=True)
class TrainConfig:
    algorithm: str = "rvsm"
    penalty: str = "l0"
    lam: float = 1e-4
    beta: float = 1e-2
    beta_final: float | None = None  # grow beta geometrically to this over the epochs, mu = lam/beta fixed
    a: float = 1.0
    epochs: int = 20
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    step_size: int = 10
    gamma: float = 0.1
    batch_size: int = 64
    sparsity: float | None = None
    finetune_epochs: int = 0
    params: list[str] | None = None
    layer_scale: bool = False  # thresholds in units of each layer's initial weight RMS (per-group lam)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.algorithm not in TRAIN_ALGORITHMS:
            raise ValueError(f"algorithm must be one of {TRAIN_ALGORITHMS}, got {self.algorithm!r}")
        if self.penalty not in PENALTIES:
            raise ValueError(f"penalty must be one of {PENALTIES}, got {self.penalty!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        for name, ok, rule in (
            ("lam", self.lam >= 0, ">= 0"),
            ("beta", self.beta > 0, "> 0"),
            ("a", self.a > 0, "> 0"),
            ("lr", self.lr > 0, "> 0"),
            ("momentum", 0 <= self.momentum < 1, "in [0, 1)"),
            ("weight_decay", self.weight_decay >= 0, ">= 0"),
            ("epochs", self.epochs >= 1, ">= 1"),
            ("batch_size", self.batch_size >= 1, ">= 1"),
            ("finetune_epochs", self.finetune_epochs >= 0, ">= 0"),
            ("step_size", self.step_size >= 1, ">= 1"),
            ("gamma", 0 < self.gamma <= 1, "in (0, 1]"),
        ):
            if not ok:
                raise ValueError(f"{name} must be {rule}, got {getattr(self, name)}")
        if self.algorithm in ("admm", "magnitude"):
            if self.sparsity is None or not 0 <= self.sparsity < 1:
                raise ValueError(f"algorithm {self.algorithm!r} needs sparsity in [0, 1), got {self.sparsity}")

    @property
    def total_epochs(self) -> int:
        return self.epochs + (self.finetune_epochs if self.algorithm in ("admm", "magnitude") else 0)


@dataclass
class TrainResult:
    model: nn.Module
    accuracy_before: float
    accuracy_after: float
    accuracy_dense: float  # the network before the final thresholding / pruning
    sparsity: dict
    trace: list[dict]
    collapsed: bool  # accuracy no better than always answering the most common class
    resumed_from_epoch: int | None
    wall_time_s: float
    config: dict = field(default_factory=dict)


def majority_rate(y: Tensor) -> float:
    """Accuracy of always answering the most common class: a network no better than this has collapsed."""
    return float(torch.bincount(y).max()) / max(len(y), 1) if len(y) else 0.0


def sparsity_report(state_dict: dict[str, Tensor], prunable: list[str]) -> dict:
    """Zeros per tensor, over the prunable tensors and over all, counted on the tensors themselves."""
    layers = {}
    for name, t in state_dict.items():
        if not t.is_floating_point():
            continue
        zeros = int((t == 0).sum())
        layers[name] = {"numel": t.numel(), "zeros": zeros, "sparsity": zeros / max(t.numel(), 1)}
    pr = [layers[n] for n in prunable if n in layers]
    tot_n = sum(v["numel"] for v in layers.values())
    pr_n = sum(v["numel"] for v in pr)
    return {
        "prunable": sum(v["zeros"] for v in pr) / max(pr_n, 1),
        "overall": sum(v["zeros"] for v in layers.values()) / max(tot_n, 1),
        "prunable_parameters": pr_n,
        "total_parameters": tot_n,
        "layers": layers,
        "prunable_names": prunable,
    }


def layer_scales(params: list[Tensor], penalty: str, *, enabled: bool) -> list[float]:
    """Per-tensor factors on ``lam`` that put each layer's threshold in units of its weight RMS.

    l0's threshold ``sqrt(2 lam/beta)`` scales with ``sqrt(lam)``, so its factor is ``rms^2``; l1's and
    TL1's thresholds are linear in ``lam`` (factor ``rms``); group-l1 thresholds a row's norm (factor
    ``rms * sqrt(row size)``). With ``enabled=False`` every factor is 1.
    """
    out = []
    for p in params:
        if not enabled:
            out.append(1.0)
            continue
        rms = float(p.detach().pow(2).mean().sqrt())
        if rms == 0:
            raise ValueError("layer_scale needs non-zero initial weights")
        if penalty == "l0":
            out.append(rms * rms)
        elif penalty == "group_l1":
            out.append(rms * math.sqrt(p[0].numel() if p.dim() > 1 else p.numel()))
        else:
            out.append(rms)
    return out


def set_beta(opt: RVSM, cfg: TrainConfig, beta: float) -> None:
    """``beta`` for every sparse group, with ``lam`` moved so each group's ``mu = lam/beta`` is unchanged."""
    for g in opt.sparse_groups():
        g["beta"] = beta
        g["lam"] = cfg.lam / cfg.beta * g["scale"] * beta


def _scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, epochs: int):
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
    if cfg.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.step_size, gamma=cfg.gamma)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _e: 1.0)


def train(
    model: nn.Module,
    data: TensorData,
    cfg: TrainConfig,
    *,
    device: str | torch.device = "cpu",
    callback: Callable[[dict], None] | None = None,
    step_callback: Callable[[int], None] | None = None,
    resume: dict | None = None,
) -> TrainResult:
    """Train ``model`` on ``data`` by ``cfg``; see the module docstring."""
    t0 = time.perf_counter()
    dev = torch.device(device)
    model.to(dev)
    names = cfg.params if cfg.params is not None else default_sparse_parameters(model)
    chosen, rest = split_parameters(model, names)
    x_tr, y_tr = data.x_train, data.y_train
    acc_before = accuracy(model, data.x_val, data.y_val) if resume is None else resume["accuracy_before"]

    scales = resume["scales"] if resume is not None else layer_scales(chosen, cfg.penalty, enabled=cfg.layer_scale)

    def base_sgd(lr: float) -> torch.optim.SGD:
        groups = [{"params": [p], "rvsm": True, "scale": s} for p, s in zip(chosen, scales, strict=True)]
        return torch.optim.SGD(
            [*groups, {"params": rest, "rvsm": False, "scale": 1.0}],
            lr=lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
        )

    # phase 1: the main training
    base = base_sgd(cfg.lr)
    if cfg.algorithm in ("rvsm", "rvscgd"):
        opt: object = RVSM(base, lam=cfg.lam, beta=cfg.beta, penalty=cfg.penalty, a=cfg.a)
        set_beta(opt, cfg, cfg.beta)
    elif cfg.algorithm == "admm":
        opt = ADMM(base, chosen, rho=cfg.beta, sparsity=cfg.sparsity or 0.0)
    else:
        opt = base
    sched = _scheduler(base, cfg, cfg.epochs)
    masks: list[Tensor] | None = None
    trace: list[dict] = []
    start_epoch = 0
    if resume is not None:
        model.load_state_dict(resume["model"])
        trace = list(resume["trace"])
        start_epoch = resume["epoch"]
        if resume.get("masks") is not None:  # resumed in the fine-tuning phase
            masks = [m.to(dev) for m in resume["masks"]]
            base = base_sgd(cfg.lr)
            opt = base
            sched = _scheduler(base, cfg, cfg.finetune_epochs)
        opt.load_state_dict(resume["optimizer"])  # type: ignore[union-attr]
        sched.load_state_dict(resume["scheduler"])

    loss_fn = nn.CrossEntropyLoss()
    step = 0
    for epoch in range(start_epoch, cfg.total_epochs):
        if epoch == cfg.epochs and masks is None and cfg.algorithm in ("admm", "magnitude"):
            # end of phase 1: prune, then fine-tune with the pruned entries held at zero
            masks = opt.prune_() if isinstance(opt, ADMM) else [magnitude_mask(p, cfg.sparsity or 0.0) for p in chosen]
            apply_masks_(chosen, masks)
            base = base_sgd(cfg.lr)
            opt = base
            sched = _scheduler(base, cfg, cfg.finetune_epochs)
        if isinstance(opt, RVSM) and cfg.beta_final is not None:
            frac = epoch / max(cfg.epochs - 1, 1)
            set_beta(opt, cfg, cfg.beta * (cfg.beta_final / cfg.beta) ** frac)
        model.train()
        perm = torch.randperm(x_tr.shape[0], generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch))
        total, count = 0.0, 0
        for i in range(0, x_tr.shape[0], cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            xb, yb = x_tr[idx].to(dev, non_blocking=True), y_tr[idx].to(dev, non_blocking=True)
            opt.zero_grad(set_to_none=True)  # type: ignore[union-attr]
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()  # type: ignore[union-attr]
            if masks is not None:
                apply_masks_(chosen, masks)
            total += float(loss.detach()) * idx.numel()
            count += idx.numel()
            step += 1
            if step_callback is not None:
                step_callback(step)
        if isinstance(opt, ADMM):
            opt.update()
        lr_now = base.param_groups[0]["lr"]
        sched.step()
        if not math.isfinite(total):
            raise FloatingPointError(f"training diverged: the loss is {total / max(count, 1)} in epoch {epoch + 1}")
        val_acc = accuracy(model, data.x_val, data.y_val)
        point = {"epoch": epoch + 1, "train_loss": total / max(count, 1), "val_accuracy": val_acc, "lr": lr_now}
        if isinstance(opt, RVSM):
            u = opt.sparse_weights()
            zeros = sum(int((t == 0).sum()) for t in u.values())
            point["sparsity_u"] = zeros / max(sum(t.numel() for t in u.values()), 1)
            with torch.no_grad():  # accuracy of the sparse u, which is what gets exported: swap u in, then w back
                for p, t in u.items():
                    u[p] = p.detach().clone()
                    p.copy_(t)
                point["val_accuracy_u"] = accuracy(model, data.x_val, data.y_val)
                for p, w in u.items():
                    p.copy_(w)
        elif masks is not None:
            point["sparsity_u"] = sum(int((p == 0).sum()) for p in chosen) / max(sum(p.numel() for p in chosen), 1)
        trace.append(point)
        if callback is not None:
            state = {
                "epoch": epoch + 1,
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),  # type: ignore[union-attr]
                "scheduler": sched.state_dict(),
                "masks": masks,
                "trace": trace,
                "accuracy_before": acc_before,
                "scales": scales,
            }
            callback(point | {"epochs": cfg.total_epochs, "state": state})

    acc_dense = accuracy(model, data.x_val, data.y_val)
    if isinstance(opt, RVSM):
        opt.sparsify_()
    model.eval()
    acc_after = accuracy(model, data.x_val, data.y_val)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return TrainResult(
        model=model,
        accuracy_before=acc_before,
        accuracy_after=acc_after,
        accuracy_dense=acc_dense,
        sparsity=sparsity_report(state, names),
        trace=trace,
        collapsed=acc_after <= majority_rate(data.y_val) + 1.0 / max(len(data.y_val), 1),
        resumed_from_epoch=start_epoch if resume is not None else None,
        wall_time_s=time.perf_counter() - t0,
        config=asdict(cfg),
    )
