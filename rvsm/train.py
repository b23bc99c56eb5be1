"""Training a network sparse: RVSM / RVSCGD and the baselines on one loop, resumable at epoch boundaries.

Algorithms (SPEC §4, deep nets):

- ``sgd``: plain SGD (momentum, weight decay) for ``epochs``; the dense reference.
- ``rvsm``: SGD on the task loss plus the ``beta (w - u)`` pull, ``u = T_mu(w)`` every step
  (:class:`rvsm.optim.RVSM`), for ``epochs``; the exported model carries ``u``.
- ``rvscgd``: the same on a binarized architecture (straight-through activations, seed 001 §6).
- ``target_sparsity = p`` (``rvsm``, ``rvscgd``, ``admm``, ``magnitude``): the chosen tensors end with
  exactly ``floor(p n)`` zeros, ``n`` counted over all of them (``sparsity_scope = "global"``) or per tensor
  (``"layer"``). RVSM then uses the l0 splitting with an adaptive threshold (SPEC §6b), its target ramped
  from 0 to ``p`` by the cubic schedule of gradual magnitude pruning, ``p_t = p (1 - (1 - (t - t0)/T)^3)``,
  step by step: ``warmup_epochs`` of dense training (``t0``; default a tenth of the epochs, so a network
  trained from scratch learns before it is pruned), then ``ramp_epochs`` (``T``; default 40%).
- ``task``: ``classification`` (cross-entropy; scores are accuracy) or ``regression`` (mean squared
  error; scores are the validation MSE).
- ``magnitude``: gradual magnitude pruning (GMP, Zhu and Gupta 2017; ``pruning = "gradual"``, the default):
  before every step of the same warm-up and cubic ramp, the chosen tensors' smallest-magnitude entries are
  zeroed to the ramped target and held at zero from then on (the zeros only grow), then trained with the masks
  held to the end of ``epochs``. ``pruning = "one_shot"``: dense training for ``epochs``, then one magnitude
  pruning to the target. Either may be followed by ``finetune_epochs`` of training with the zeros held (a fresh
  learning-rate schedule); ``rvsm`` and ``rvscgd`` may fine-tune the same way after their ``epochs`` (``w <- u``,
  then the zeros held).
- ``optimizer``: the base step every algorithm takes (RVSM / ADMM add their pull to its gradient; the
  fine-tuning phase uses it too): ``sgd`` (momentum 0.9, weight decay 5e-4, lr 0.05 unless given) or ``adamw``
  (``torch.optim.AdamW`` with its own defaults: betas (0.9, 0.999), weight decay 0.01, and lr 1e-3 unless given;
  ``momentum`` is SGD's and an error with it).
- ``admm``: ADMM (``rho = beta``, ``z`` = each tensor's top ``1 - sparsity`` magnitudes, dual update every
  epoch) for ``epochs``, then the same pruning and fine-tuning.

``callback(event)`` is called after every epoch with the epoch's numbers and ``event["state"]``, a
resumable state (pass it back as ``resume=`` to continue after that epoch: same data order, same
result). It references the live model and optimizer tensors: save or copy it inside the callback.
``step_callback(step, steps_per_epoch)`` is called after every optimizer step (``step`` counts from the
start of training, resumed epochs included; the job has ``steps_per_epoch * cfg.total_epochs`` steps)
and may raise to stop.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields, replace

import torch
from torch import Tensor, nn

from .data import TASKS, TensorData, evaluate, is_collapsed
from .errors import InputError
from .inputs import call, rows, select, to
from .models import default_sparse_parameters
from .optim import ADMM, RVSM, SCOPES, apply_masks_, magnitude_masks, split_parameters, target_zeros
from .prox import PENALTIES

TRAIN_ALGORITHMS = ("sgd", "rvsm", "rvscgd", "admm", "magnitude")
TARGET_ALGORITHMS = ("rvsm", "rvscgd", "admm", "magnitude")
SCHEDULES = ("constant", "step", "cosine")
PRUNING = ("gradual", "one_shot")  # magnitude: GMP's ramp during training, or one pruning at the end
OPTIMIZERS = ("sgd", "adamw")
# lr and weight_decay when not given: SGD's tuned values (momentum 0.9 too), AdamW's own
DEFAULT_LR = {"sgd": 0.05, "adamw": 1e-3}
DEFAULT_WEIGHT_DECAY = {"sgd": 5e-4, "adamw": 1e-2}
SGD_MOMENTUM = 0.9
# beta when not given, by mode (TrainConfig.mode): the splitting's coupling with lam (thresholds mu = lam/beta), its
# pull with an adaptive-threshold target (strong, so w stays near u: docs/benchmarks.md), and ADMM's rho
# lambda mode (l0, layer_scale): mu = lam/beta from which accuracy fell off a cliff on a benchmark model (lenet5
# at lam 0.08, beta 0.1: mean 0.68, one seed collapsed; docs/benchmarks.md, "Lambda mode"); a job there or past it
# gets a warning in its report (lam_warnings)
CLIFF_MU = 0.8
# lambda mode: no threshold may zero a tensor whole; each keeps at least this fraction of its entries by default
MIN_KEEP = 0.01
DEFAULT_BETA = {"lambda": 0.1, "target": 3.0, "admm": 0.001}
# batch_size when not given: the largest of these that gives the job at least MIN_STEPS optimizer steps (a short
# job on a small set takes smaller batches, so it learns; docs/benchmarks.md, "Short jobs")
BATCH_SIZES = (64, 32, 16, 8)
MIN_STEPS = 600


def default_batch_size(train_rows: int, epochs: int) -> int:
    """The largest of :data:`BATCH_SIZES` for which ``epochs`` epochs over ``train_rows`` samples take at least
    :data:`MIN_STEPS` optimizer steps, the smallest if none does."""
    if train_rows < 1 or epochs < 1:
        raise ValueError(f"train_rows and epochs must be >= 1, got {train_rows} and {epochs}")
    return next((b for b in BATCH_SIZES if epochs * math.ceil(train_rows / b) >= MIN_STEPS), BATCH_SIZES[-1])


@dataclass(kw_only=True)
class TrainConfig:
    algorithm: str = "rvsm"
    penalty: str = "l0"
    lam: float = 0.05  # with layer_scale and l0: threshold sqrt(2 lam/beta) = 1 x each layer's RMS
    beta: float | None = None  # None: DEFAULT_BETA for the mode, filled in at construction
    beta_final: float | None = None  # grow beta geometrically to this over the epochs, mu = lam/beta fixed
    a: float = 1.0
    epochs: int = 20
    optimizer: str = "sgd"
    lr: float | None = None  # None: the optimizer's default (DEFAULT_LR), filled in at construction
    momentum: float | None = None
    weight_decay: float | None = None
    schedule: str = "cosine"
    step_size: int = 10
    gamma: float = 0.1
    batch_size: int | None = None  # None: the largest of BATCH_SIZES giving MIN_STEPS steps (default_batch_size)
    sparsity: float | None = None  # admm / magnitude only: the older name of target_sparsity
    target_sparsity: float | None = None
    sparsity_scope: str = "global"
    warmup_epochs: int | None = None  # ramped targets: dense epochs before the ramp; default a tenth, at least 1
    ramp_epochs: int | None = None  # RVSM target: epochs over which it ramps up; default 40% of the epochs
    finetune_epochs: int = 0
    tail_epochs: int | None = None  # RVSM target: the last epochs of `epochs` train w <- u, zeros held; default 20%
    pruning: str | None = None  # magnitude only: "gradual" (the default) or "one_shot"
    params: list[str] | None = None
    layer_scale: bool = True  # lambda mode: thresholds in units of each layer's initial weight RMS
    min_keep: float | None = None  # lambda mode: each tensor keeps at least this fraction; default MIN_KEEP
    task: str = "classification"
    seed: int = 0

    def __post_init__(self) -> None:
        for name, allowed in (
            ("algorithm", TRAIN_ALGORITHMS),
            ("penalty", PENALTIES),
            ("schedule", SCHEDULES),
            ("sparsity_scope", SCOPES),
            ("task", TASKS),
            ("optimizer", OPTIMIZERS),
        ):
            if getattr(self, name) not in allowed:
                raise InputError(name, f"must be one of {allowed}, got {getattr(self, name)!r}")
        if self.optimizer == "adamw" and self.momentum is not None:
            raise InputError("momentum", "is SGD's; optimizer 'adamw' uses its betas (0.9, 0.999)")
        if self.beta is None:
            self.beta = DEFAULT_BETA[self.mode]
        if self.lr is None:
            self.lr = DEFAULT_LR[self.optimizer]
        if self.weight_decay is None:
            self.weight_decay = DEFAULT_WEIGHT_DECAY[self.optimizer]
        if self.momentum is None and self.optimizer == "sgd":
            self.momentum = SGD_MOMENTUM
        for name, ok, rule in (
            ("lam", self.lam >= 0, ">= 0"),
            ("beta", self.coupling > 0, "> 0"),
            ("a", self.a > 0, "> 0"),
            ("lr", self.step_lr > 0, "> 0"),
            ("momentum", self.momentum is None or 0 <= self.momentum < 1, "in [0, 1)"),
            ("weight_decay", self.decay >= 0, ">= 0"),
            ("epochs", self.epochs >= 1, ">= 1"),
            ("batch_size", self.batch_size is None or self.batch_size >= 1, ">= 1"),
            ("finetune_epochs", self.finetune_epochs >= 0, ">= 0"),
            ("step_size", self.step_size >= 1, ">= 1"),
            ("gamma", 0 < self.gamma <= 1, "in (0, 1]"),
        ):
            if not ok:
                raise InputError(name, f"must be {rule}, got {getattr(self, name)}")
        self._check_target()

    def _check_target(self) -> None:
        """Which algorithms use which sparsity field: a field an algorithm would ignore is an error."""
        if self.finetune_epochs and self.algorithm == "sgd":
            raise InputError("finetune_epochs", "fine-tunes a pruned network; algorithm 'sgd' prunes nothing")
        if self.pruning is not None and (self.algorithm != "magnitude" or self.pruning not in PRUNING):
            raise InputError(
                "pruning",
                f"is magnitude pruning's schedule, one of {PRUNING}; got {self.pruning!r} "
                f"with algorithm {self.algorithm!r}",
            )
        if self.sparsity is not None and self.algorithm not in ("admm", "magnitude"):
            raise InputError(
                "sparsity",
                f"is not used by algorithm {self.algorithm!r}; use target_sparsity "
                "(rvsm, rvscgd, admm, magnitude) or lam/beta",
            )
        if self.sparsity is not None and self.target_sparsity not in (None, self.sparsity):
            raise InputError("sparsity", "give target_sparsity or sparsity, not both")
        if self.target_sparsity is not None and self.algorithm not in TARGET_ALGORITHMS:
            raise InputError("target_sparsity", f"is not used by algorithm {self.algorithm!r} (dense training)")
        p = self.target
        if p is not None and not 0 < p < 1:
            raise InputError("target_sparsity", f"must be in (0, 1), got {p}")
        if p is None and self.algorithm in ("admm", "magnitude"):
            raise InputError("target_sparsity", f"algorithm {self.algorithm!r} needs a target sparsity in (0, 1)")
        if p is not None and self.algorithm in ("rvsm", "rvscgd") and self.penalty != "l0":
            raise InputError(
                "penalty",
                "target_sparsity is the l0 splitting with an adaptive threshold; "
                f"penalty must be 'l0', got {self.penalty!r}",
            )
        if (self.ramp_epochs is not None or self.warmup_epochs is not None) and not self.ramps:
            raise InputError(
                "ramp_epochs" if self.ramp_epochs is not None else "warmup_epochs",
                "applies only to a ramped target: target_sparsity with rvsm, rvscgd or gradual magnitude pruning",
            )
        if self.min_keep is not None and (self.algorithm not in ("rvsm", "rvscgd") or self.target is not None):
            raise InputError("min_keep", "is lambda mode's floor (rvsm / rvscgd without target_sparsity)")
        if self.min_keep is not None and not 0 <= self.min_keep < 1:
            raise InputError("min_keep", f"must be in [0, 1), got {self.min_keep}")
        if self.tail_epochs is not None and (self.target is None or self.algorithm not in ("rvsm", "rvscgd")):
            raise InputError("tail_epochs", "is RVSM's masked tail; applies only to rvsm / rvscgd with target_sparsity")
        if self.warmup + self.ramp + self.tail > self.epochs:
            raise InputError(
                "ramp_epochs" if self.tail_epochs is None else "tail_epochs",
                f"warmup_epochs + ramp_epochs + tail_epochs must be <= epochs = {self.epochs}, got "
                f"{self.warmup} + {self.ramp} + {self.tail}",
            )

    @classmethod
    def from_spec(cls, spec: dict) -> TrainConfig:
        """The config from a job spec's fields (others, such as ``kind`` or ``dataset``, are left out)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in spec.items() if k in names})

    @property
    def target(self) -> float | None:
        """The target sparsity in force (``target_sparsity``, or ``sparsity`` for admm / magnitude)."""
        return self.target_sparsity if self.target_sparsity is not None else self.sparsity

    def resolved(self, train_rows: int) -> TrainConfig:
        """This config with the defaults that depend on the data set filled in: ``batch_size``
        (:func:`default_batch_size` over ``epochs + finetune_epochs``)."""
        if self.batch_size is not None:
            return self
        return replace(self, batch_size=default_batch_size(train_rows, self.total_epochs))

    @property
    def batch(self) -> int:
        """``batch_size`` as resolved (:meth:`resolved`)."""
        if self.batch_size is None:
            raise ValueError("batch_size is not resolved yet: call TrainConfig.resolved(train_rows)")
        return self.batch_size

    def steps_per_epoch(self, train_rows: int) -> int:
        """Optimizer steps in one epoch over ``train_rows`` samples (the last batch may be short)."""
        return math.ceil(train_rows / self.batch)

    @property
    def mode(self) -> str:
        """Which default ``beta`` applies: ``"admm"``, ``"target"`` (RVSM with target_sparsity) or ``"lambda"``."""
        if self.algorithm == "admm":
            return "admm"
        return "target" if self.target is not None else "lambda"

    @property
    def coupling(self) -> float:
        """``beta`` as filled in (:data:`DEFAULT_BETA` for the mode when not given)."""
        return self.beta if self.beta is not None else DEFAULT_BETA[self.mode]

    @property
    def keep_floor(self) -> float:
        """``min_keep`` as filled in: :data:`MIN_KEEP` in lambda mode unless given, 0 otherwise."""
        if self.min_keep is not None:
            return self.min_keep
        return MIN_KEEP if self.algorithm in ("rvsm", "rvscgd") and self.target is None else 0.0

    @property
    def tail(self) -> int:
        """RVSM target mode: the epochs at the end of ``epochs`` that train ``w <- u`` with its zeros held; default
        a fifth of the epochs, within what the warm-up and the ramp leave."""
        if self.tail_epochs is not None:
            return self.tail_epochs
        if self.target is None or self.algorithm not in ("rvsm", "rvscgd"):
            return 0
        return min(self.epochs // 5, self.epochs - self.warmup - self.ramp)

    @property
    def gradual(self) -> bool:
        """Gradual magnitude pruning: masks raised on the ramp during training."""
        return self.algorithm == "magnitude" and self.pruning in (None, "gradual")

    @property
    def ramps(self) -> bool:
        """Whether the target is ramped up during ``epochs`` (RVSM's adaptive threshold, or GMP's masks)."""
        return self.target is not None and (self.algorithm in ("rvsm", "rvscgd") or self.gradual)

    @property
    def step_lr(self) -> float:
        """``lr`` as filled in (the optimizer's default when not given)."""
        return self.lr if self.lr is not None else DEFAULT_LR[self.optimizer]

    @property
    def decay(self) -> float:
        """``weight_decay`` as filled in."""
        return self.weight_decay if self.weight_decay is not None else DEFAULT_WEIGHT_DECAY[self.optimizer]

    @property
    def warmup(self) -> int:
        return self.warmup_epochs if self.warmup_epochs is not None else math.ceil(self.epochs / 10)

    @property
    def ramp(self) -> int:
        return self.ramp_epochs if self.ramp_epochs is not None else (self.epochs * 2) // 5

    @property
    def total_epochs(self) -> int:
        return self.epochs + self.finetune_epochs


@dataclass
class TrainResult:
    model: nn.Module
    metric: str  # "accuracy" (classification) or "mse" (regression): what the scores are
    score_before: float
    score_after: float
    score_dense: float  # the network before the final thresholding / pruning
    sparsity: dict
    trace: list[dict]
    collapsed: bool  # near chance (data.is_collapsed)
    resumed_from_epoch: int | None
    wall_time_s: float
    config: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # what the job's owner should know (lam_warnings)


def sparsity_report(state_dict: dict[str, Tensor], prunable: list[str]) -> dict:
    """Zeros per tensor, over the prunable tensors, over every weight matrix (a floating tensor of two or more
    dimensions, pruned or not) and over all, counted on the tensors themselves. Each tensor says whether it was
    pruned, so a report can never give the pruned set's sparsity while most weights stayed dense."""
    chosen = {state_dict[n].data_ptr() for n in prunable if n in state_dict}  # a tied tensor: under each name
    layers = {}
    for name, t in state_dict.items():
        if not t.is_floating_point():
            continue
        zeros = int((t == 0).sum())
        layers[name] = {
            "numel": t.numel(),
            "zeros": zeros,
            "sparsity": zeros / max(t.numel(), 1),
            "pruned": t.data_ptr() in chosen,
            "matrix": t.dim() >= 2,
        }
    pr = [layers[n] for n in prunable if n in layers]
    mats = [v for v in layers.values() if v["matrix"]]
    tot_n = sum(v["numel"] for v in layers.values())
    pr_n = sum(v["numel"] for v in pr)
    mat_n = sum(v["numel"] for v in mats)
    return {
        "prunable": sum(v["zeros"] for v in pr) / max(pr_n, 1),
        "weight_matrices": sum(v["zeros"] for v in mats) / max(mat_n, 1),
        "overall": sum(v["zeros"] for v in layers.values()) / max(tot_n, 1),
        "prunable_parameters": pr_n,
        "weight_matrix_parameters": mat_n,
        "total_parameters": tot_n,
        "layers": layers,
        "prunable_names": prunable,
        "dense_matrices": [n for n, v in layers.items() if v["matrix"] and not v["pruned"]],
    }


def pruned_layers(sparsity: dict) -> list[dict]:
    """The per-tensor entries of a :func:`sparsity_report` for the sparsified tensors, each once."""
    return [sparsity["layers"][n] for n in dict.fromkeys(sparsity["prunable_names"]) if n in sparsity["layers"]]


class ResultRejected(RuntimeError):
    """Training ended with a network that breaks the job's contract: fewer zeros than its target asks, or every
    sparsified weight zero. The job fails with this message instead of returning the network."""


def check_result(sparsity: dict, cfg: TrainConfig) -> None:
    """The contract on a trained network's :func:`sparsity_report`: with a target, at least the zeros the target
    gives in whole entries (:func:`rvsm.optim.target_zeros`, less one per tensor for rounding) over the sparsified
    tensors; whatever the mode, not every sparsified weight zero. ``ResultRejected`` otherwise."""
    pruned = pruned_layers(sparsity)
    zeros, total = sum(v["zeros"] for v in pruned), sum(v["numel"] for v in pruned)
    if total and zeros == total:
        raise ResultRejected(
            f"every one of the {total} sparsified weights is zero: the network computes nothing "
            "(lower lam, or use target_sparsity)"
        )
    if cfg.target is not None:
        want = target_zeros([v["numel"] for v in pruned], cfg.target, scope=cfg.sparsity_scope)
        if zeros < want - len(pruned):
            raise ResultRejected(
                f"the sparsified tensors end with {zeros} zeros of {total}, short of the "
                f"{want} that target_sparsity {cfg.target} asks"
            )


def lam_warnings(cfg: TrainConfig) -> list[str]:
    """Lambda mode's known cliff: ``lam / beta`` at or past :data:`CLIFF_MU` (l0, thresholds in units of each
    layer's RMS) is where a benchmark model fell off a cliff, and past it every one did."""
    if cfg.target is not None or cfg.algorithm not in ("rvsm", "rvscgd") or cfg.penalty != "l0" or not cfg.layer_scale:
        return []
    mu = cfg.lam / cfg.coupling
    if mu < CLIFF_MU:
        return []
    return [
        f"lam {cfg.lam} with beta {cfg.coupling} puts mu = lam/beta = {mu:.3g} at or past {CLIFF_MU}, where "
        "accuracy fell off a cliff on a benchmark model, and past it on all three (docs/benchmarks.md, 'Lambda "
        "mode'); lower lam, or name the sparsity you want with target_sparsity"
    ]


def layer_scales(params: Sequence[Tensor], penalty: str, *, enabled: bool) -> list[float]:
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


Stepper = torch.optim.Optimizer | RVSM | ADMM
"""What trains: the base optimizer, SGD or AdamW (also the fine-tuning phase), or RVSM / ADMM on top of it."""


def set_beta(opt: RVSM, cfg: TrainConfig, beta: float) -> None:
    """``beta`` for every sparse group, with ``lam`` moved so each group's ``mu = lam/beta`` is unchanged."""
    for g in opt.sparse_groups():
        g["beta"] = beta
        g["lam"] = cfg.lam / cfg.coupling * g["scale"] * beta


def ramped_target(p: float, step: int, start: int, ramp_steps: int) -> float:
    """The cubic ramp of gradual magnitude pruning (Zhu and Gupta 2017): 0 before ``start``, then
    ``p (1 - (1 - (t - start)/T)^3)`` for ``T = ramp_steps`` steps, then ``p``."""
    if step < start:
        return 0.0
    if step >= start + ramp_steps:
        return p
    return p * (1.0 - (1.0 - (step - start) / ramp_steps) ** 3)


def _scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, epochs: int):
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
    if cfg.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.step_size, gamma=cfg.gamma)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _e: 1.0)


def _loss_fn(task: str, ignore_index: int) -> Callable[[Tensor, Tensor], Tensor]:
    """Cross-entropy over samples, or over tokens (logits ``(B, T, C)`` against labels ``(B, T)``), labels equal
    to ``ignore_index`` left out; mean squared error for regression."""
    if task == "classification":
        return lambda out, y: nn.functional.cross_entropy(
            out.reshape(-1, out.shape[-1]), y.reshape(-1), ignore_index=ignore_index
        )
    return lambda out, y: nn.functional.mse_loss(out.reshape(y.shape), y)


def _main_optimizer(cfg: TrainConfig, base: torch.optim.Optimizer, chosen: list[nn.Parameter]) -> Stepper:
    if cfg.algorithm in ("rvsm", "rvscgd"):
        opt = RVSM(
            base,
            lam=cfg.lam,
            beta=cfg.coupling,
            penalty=cfg.penalty,
            a=cfg.a,
            scope=cfg.sparsity_scope,
            target_sparsity=0.0 if cfg.target is not None else None,
            min_keep=cfg.keep_floor,
        )
        set_beta(opt, cfg, cfg.coupling)
        return opt
    if cfg.algorithm == "admm":
        return ADMM(base, chosen, rho=cfg.coupling, sparsity=cfg.target or 0.0, scope=cfg.sparsity_scope)
    return base


@torch.no_grad()
def _prune_(opt: object, cfg: TrainConfig, chosen: list[nn.Parameter]) -> list[Tensor]:
    """Zero the pruned entries (RVSM: ``w <- u``; ADMM: its projection; magnitude: the smallest) and return the
    keep-masks the fine-tuning phase holds."""
    if isinstance(opt, RVSM):
        if cfg.target is not None:
            opt.target = cfg.target
        opt.sparsify_()
        masks = [p != 0 for p in chosen]
    elif isinstance(opt, ADMM):
        masks = opt.prune_()
    else:
        masks = magnitude_masks(chosen, cfg.target or 0.0, scope=cfg.sparsity_scope)
    apply_masks_(chosen, masks)
    return masks


@torch.no_grad()
def _ramp_step(
    opt: Stepper,
    cfg: TrainConfig,
    chosen: list[nn.Parameter],
    masks: list[Tensor] | None,
    step: int,
    steps_per_epoch: int,
) -> list[Tensor] | None:
    """Before a step of the main phase, the target ramped to this step: RVSM's adaptive threshold, or gradual
    magnitude pruning's masks (recomputed on the masked weights, so the zeros only grow, and applied). Returns
    the masks in force."""
    start, span, target = cfg.warmup * steps_per_epoch, cfg.ramp * steps_per_epoch, cfg.target or 0.0
    p = ramped_target(target, step, start, span)
    if isinstance(opt, RVSM):
        opt.target = p
    elif p > 0 and (masks is None or p > ramped_target(target, step - 1, start, span)):
        masks = magnitude_masks(chosen, p, scope=cfg.sparsity_scope)
        apply_masks_(chosen, masks)
    return masks


@torch.no_grad()
def _u_point(opt: RVSM, model: nn.Module, data: TensorData, metric: str) -> dict:
    """Sparsity of ``u`` and the score of the network with ``u`` swapped in (what gets exported)."""
    u = opt.sparse_weights()
    zeros = sum(int((t == 0).sum()) for t in u.values())
    point = {"sparsity_u": zeros / max(sum(t.numel() for t in u.values()), 1)}
    for p, t in u.items():
        u[p] = p.detach().clone()
        p.copy_(t)
    point[f"val_{metric}_u"] = _score(model, data)
    for p, w in u.items():
        p.copy_(w)
    return point


def _score(model: nn.Module, data: TensorData) -> float:
    """The validation accuracy or MSE (:func:`rvsm.data.evaluate`)."""
    return evaluate(model, data.x_val, data.y_val, task=data.task, ignore_index=data.ignore_index)


@contextlib.contextmanager
def flush_denormals() -> Iterator[None]:
    """Denormal floats flushed to zero inside (CPU arithmetic on them can be many times slower), and the
    process's previous setting restored after: the toy problems need subnormal numbers."""
    before = float(torch.tensor(1e-310, dtype=torch.float64) * 1.0) == 0.0  # is flushing on now?
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(before)


def train(
    model: nn.Module,
    data: TensorData,
    cfg: TrainConfig,
    *,
    device: str | torch.device = "cpu",
    callback: Callable[[dict], None] | None = None,
    step_callback: Callable[[int, int], None] | None = None,
    resume: dict | None = None,
) -> TrainResult:
    """Train ``model`` on ``data`` by ``cfg`` (module docstring), denormals flushed (:func:`flush_denormals`)."""
    with flush_denormals():
        return _train(model, data, cfg, device=device, callback=callback, step_callback=step_callback, resume=resume)


def _train(
    model: nn.Module,
    data: TensorData,
    cfg: TrainConfig,
    *,
    device: str | torch.device,
    callback: Callable[[dict], None] | None,
    step_callback: Callable[[int, int], None] | None,
    resume: dict | None,
) -> TrainResult:
    t0 = time.perf_counter()
    dev = torch.device(device)
    model.to(dev)
    if data.task != cfg.task:
        raise InputError("task", f"the config says {cfg.task!r}, the data set was loaded for {data.task!r}")
    metric = "accuracy" if cfg.task == "classification" else "mse"
    cfg = cfg.resolved(rows(data.x_train))
    names = cfg.params if cfg.params is not None else default_sparse_parameters(model)
    chosen, rest = split_parameters(model, names)
    x_tr, y_tr = data.x_train, data.y_train
    before = _score(model, data) if resume is None else resume["accuracy_before"]
    enabled = cfg.layer_scale and cfg.target is None
    scales = resume["scales"] if resume is not None else layer_scales(chosen, cfg.penalty, enabled=enabled)

    def base_optimizer(lr: float) -> torch.optim.Optimizer:
        """``cfg.optimizer`` over every parameter: what all algorithms step with (RVSM / ADMM wrap it)."""
        groups = [{"params": [p], "rvsm": True, "scale": s} for p, s in zip(chosen, scales, strict=True)]
        all_groups = [*groups, {"params": rest, "rvsm": False, "scale": 1.0}]
        if cfg.optimizer == "adamw":
            return torch.optim.AdamW(all_groups, lr=lr, weight_decay=cfg.decay)
        return torch.optim.SGD(all_groups, lr=lr, momentum=cfg.momentum or 0.0, weight_decay=cfg.decay)

    # phase 1: the main training
    base = base_optimizer(cfg.step_lr)
    opt: Stepper = _main_optimizer(cfg, base, chosen)
    sched = _scheduler(base, cfg, cfg.epochs)
    masks: list[Tensor] | None = None
    finetuning = False
    trace: list[dict] = []
    start_epoch = 0
    if resume is not None:
        model.load_state_dict(resume["model"])
        trace = list(resume["trace"])
        start_epoch = resume["epoch"]
        masks = [m.to(dev) for m in resume["masks"]] if resume.get("masks") is not None else None
        finetuning = resume.get("finetuning", masks is not None)  # (states from before GMP: masks meant fine-tuning)
        if finetuning:
            base = base_optimizer(cfg.step_lr)
            opt = base
            sched = _scheduler(base, cfg, cfg.finetune_epochs)
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["scheduler"])

    loss_fn = _loss_fn(cfg.task, data.ignore_index)
    steps_per_epoch = cfg.steps_per_epoch(rows(x_tr))
    step = start_epoch * steps_per_epoch
    for epoch in range(start_epoch, cfg.total_epochs):
        if isinstance(opt, RVSM) and cfg.tail and epoch == cfg.epochs - cfg.tail and masks is None:
            # the masked tail: w <- u, then trained with its zeros held (the pull is zero on a w equal to its u)
            opt.target = cfg.target
            opt.sparsify_()
            masks = [p != 0 for p in chosen]
        if epoch == cfg.epochs and not finetuning:
            # end of phase 1 (only with finetune_epochs): prune, then fine-tune with the pruned entries held at zero
            masks, finetuning = _prune_(opt, cfg, chosen), True
            base = base_optimizer(cfg.step_lr)
            opt = base
            sched = _scheduler(base, cfg, cfg.finetune_epochs)
        if isinstance(opt, RVSM) and cfg.beta_final is not None:
            frac = epoch / max(cfg.epochs - 1, 1)
            set_beta(opt, cfg, cfg.coupling * (cfg.beta_final / cfg.coupling) ** frac)
        model.train()
        perm = torch.randperm(rows(x_tr), generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch))
        total, count = 0.0, 0
        for i in range(0, rows(x_tr), cfg.batch):
            idx = perm[i : i + cfg.batch]
            xb, yb = to(select(x_tr, idx), dev), y_tr[idx].to(dev, non_blocking=True)
            if cfg.ramps and not finetuning:
                masks = _ramp_step(opt, cfg, chosen, masks, step, steps_per_epoch)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(call(model, xb), yb)
            loss.backward()
            opt.step()
            if masks is not None:
                apply_masks_(chosen, masks)
            total += float(loss.detach()) * idx.numel()
            count += idx.numel()
            step += 1
            if step_callback is not None:
                step_callback(step, steps_per_epoch)
        if isinstance(opt, ADMM):
            opt.update()
        lr_now = base.param_groups[0]["lr"]
        sched.step()
        if not math.isfinite(total):
            raise FloatingPointError(f"training diverged: the loss is {total / max(count, 1)} in epoch {epoch + 1}")
        point = {
            "epoch": epoch + 1,
            "train_loss": total / max(count, 1),
            f"val_{metric}": _score(model, data),
            "lr": lr_now,
        }
        if isinstance(opt, RVSM):
            point |= _u_point(opt, model, data, metric)
        elif masks is not None:
            point["sparsity_u"] = sum(int((p == 0).sum()) for p in chosen) / max(sum(p.numel() for p in chosen), 1)
        trace.append(point)
        if callback is not None:
            state = {
                "epoch": epoch + 1,
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "masks": masks,
                "finetuning": finetuning,
                "trace": trace,
                "accuracy_before": before,
                "scales": scales,
            }
            callback(point | {"epochs": cfg.total_epochs, "state": state})

    dense = _score(model, data)
    if isinstance(opt, RVSM):
        if cfg.target is not None:
            opt.target = cfg.target
        opt.sparsify_()
    elif cfg.target is not None and not finetuning:  # magnitude / admm without fine-tuning: prune at the end
        _prune_(opt, cfg, chosen)
    model.eval()
    after = _score(model, data)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    sparsity = sparsity_report(state, names)
    if cfg.target is not None:  # what the target gives in whole entries: the value a --min-sparsity gate can ask
        numels = [v["numel"] for v in pruned_layers(sparsity)]
        sparsity["target_reachable"] = target_zeros(numels, cfg.target, scope=cfg.sparsity_scope) / max(sum(numels), 1)
    check_result(sparsity, cfg)
    return TrainResult(
        model=model,
        metric=metric,
        score_before=before,
        score_after=after,
        score_dense=dense,
        sparsity=sparsity,
        trace=trace,
        collapsed=is_collapsed(after, data),
        resumed_from_epoch=start_epoch if resume is not None else None,
        wall_time_s=time.perf_counter() - t0,
        config=asdict(cfg),
        warnings=lam_warnings(cfg),
    )
