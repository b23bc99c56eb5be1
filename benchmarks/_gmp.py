"""The peer every pruning benchmark compares against: gradual magnitude pruning (GMP, Zhu and Gupta 2017) as a
user would write it with ``torch.nn.utils.prune``.

``prune.global_unstructured`` (L1) on the tensors the service prunes (``prepared.sparse_names``), raised before
every step on the cubic schedule over the warm-up and ramp of the given config (the service's RVSM defaults:
dense for a tenth of the epochs, ramped over the next 40%), then trained with the masks held for the rest. The
optimizer, learning rate, weight decay, batch size, data order and cosine schedule are the config's, so the peer
and the service's runs differ only in how they sparsify.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import prune

from rvsm.data import TensorData, evaluate
from rvsm.inputs import call, rows, select
from rvsm.prepare import Prepared
from rvsm.train import TrainConfig, ramped_target, sparsity_report

Pair = tuple[nn.Module, str]


def owner(root: nn.Module, name: str) -> Pair:
    path, _, attr = name.rpartition(".")
    return root.get_submodule(path), attr


class GradualMagnitude:
    """``torch.nn.utils.prune`` on an exported module. The unlifted graph reads each weight as an attribute and
    never calls the submodules, so prune's forward pre-hooks (``weight = weight_orig * weight_mask``) are run
    from one hook on the root; a tied weight (GPT-2's ``lm_head`` = ``wte``) gets the same masked tensor under
    its other name, which ``prune`` alone would leave dense there."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        params = dict(model.named_parameters(remove_duplicate=False))
        first: dict[int, str] = {}
        for n in names:
            first.setdefault(id(params[n]), n)  # a tied tensor once, under its first name
        names = list(first.values())
        self.pairs = [owner(model, n) for n in names]
        self.total = sum(params[n].numel() for n in names)
        pruned = {id(params[n]): owner(model, n) for n in names}
        self.aliases = [
            (owner(model, n), pruned[id(p)])
            for n, p in params.items()
            if id(p) in pruned and owner(model, n) != pruned[id(p)]
        ]
        prune.global_unstructured(self.pairs, pruning_method=prune.L1Unstructured, amount=0)
        for (m, a), _ in self.aliases:
            del m._parameters[a]
        self.handle = model.register_forward_pre_hook(lambda _m, _a: self.refresh())

    def refresh(self) -> None:
        for m, _ in self.pairs:
            for hook in m._forward_pre_hooks.values():
                hook(m, ())
        for (m, a), (src, attr) in self.aliases:
            setattr(m, a, getattr(src, attr))

    def zeros(self) -> int:
        return sum(int((getattr(m, a + "_mask") == 0).sum()) for m, a in self.pairs)

    def prune_to(self, sparsity: float) -> None:
        """Raise the global L1 pruning to ``floor(sparsity n)`` zeros (prune's ``amount`` counts new ones)."""
        more = math.floor(sparsity * self.total) - self.zeros()
        if more > 0:
            self.refresh()  # rank the weights as they are now, not as the last forward saw them
            prune.global_unstructured(self.pairs, pruning_method=prune.L1Unstructured, amount=more)

    def finish(self) -> None:
        """``prune.remove``: the masked weights become plain parameters again (tied names re-tied)."""
        for m, a in self.pairs:
            prune.remove(m, a)
        for (m, a), (src, attr) in self.aliases:
            setattr(m, a, getattr(src, attr))
        self.handle.remove()


def optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The config's optimizer over every parameter, as the service builds its base step."""
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg.step_lr, weight_decay=cfg.decay)
    return torch.optim.SGD(model.parameters(), lr=cfg.step_lr, momentum=cfg.momentum or 0.0, weight_decay=cfg.decay)


def gmp_epoch(
    model: nn.Module,
    data: TensorData,
    opt: torch.optim.Optimizer,
    gmp: GradualMagnitude,
    cfg: TrainConfig,
    epoch: int,
    step: int,
) -> int:
    """One epoch of the peer's loop; the cubic schedule raises the pruning before every step of the ramp."""
    steps = math.ceil(rows(data.x_train) / cfg.batch)
    start, span, target = cfg.warmup * steps, cfg.ramp * steps, cfg.target or 0.0
    perm = torch.randperm(rows(data.x_train), generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch))
    model.train()
    for i in range(0, len(perm), cfg.batch):
        gmp.prune_to(ramped_target(target, step, start, span))
        idx = perm[i : i + cfg.batch]
        out, y = call(model, select(data.x_train, idx)), data.y_train[idx]
        loss = nn.functional.cross_entropy(
            out.reshape(-1, out.shape[-1]), y.reshape(-1), ignore_index=data.ignore_index
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
    return step


def gmp_train(prep: Prepared, cfg: TrainConfig) -> tuple[float, float]:
    """The peer: the config's optimizer over every parameter, cosine over all epochs; validation accuracy (per
    token where labels are per token) and sparsity of the pruned set at the end."""
    cfg = cfg.resolved(rows(prep.data.x_train))
    gmp = GradualMagnitude(prep.model, prep.sparse_names)
    opt = optimizer(prep.model, cfg)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    step = 0
    for epoch in range(cfg.epochs):
        step = gmp_epoch(prep.model, prep.data, opt, gmp, cfg, epoch, step)
        sched.step()
    gmp.prune_to(cfg.target or 0.0)  # a no-op unless the ramp ran to the very end
    gmp.finish()
    state = {k: v.detach() for k, v in prep.model.state_dict().items()}
    data = prep.data
    acc = evaluate(prep.model, data.x_val, data.y_val, task="classification", ignore_index=data.ignore_index)
    return acc, sparsity_report(state, prep.sparse_names)["prunable"]
