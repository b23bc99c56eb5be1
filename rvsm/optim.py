"""RVSM for any PyTorch training loop, and the ADMM and magnitude-pruning baselines (SPEC §4, deep nets).

RVSM (seed 002 Algorithm 1, mini-batch form; seed 001 §6 for binarized nets) minimises
``f(w) + lam P(u) + beta/2 |w - u|^2`` by, every step,

    u <- T_mu(w)  (mu = lam/beta);   g <- grad f(w) + beta (w - u);   w <- base_step(w, g)

where ``base_step`` is the wrapped optimizer (SGD with momentum and weight decay by default). The
sparse answer is ``u``: :meth:`RVSM.sparsify_` writes it into the weights. Parameter groups carry
their own ``lam``, ``beta``, ``penalty``, ``a``; a group with ``rvsm=False`` (biases, norm layers)
gets the plain base step. The pull uses torch's multi-tensor ``_foreach_*`` kernels for l0 and l1.

With ``target_sparsity = p`` (SPEC §6b) the splitting is l0 with an adaptive threshold: at every step
``u`` keeps the largest ``(1 - p)`` fraction of ``|w|`` (over all sparse tensors together, ``scope =
"global"``, or tensor by tensor, ``"layer"``) and zeroes the rest, the deep-net form of seed 000's
Algorithm 2 (adaptive hard thresholding). The training loop may ramp ``RVSM.target`` up to ``p``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from .prox import PENALTIES, apply_threshold, top_s_mask

SCOPES = ("global", "layer")


def _check_target(sparsity: float, scope: str) -> None:
    if not 0 <= sparsity < 1:
        raise ValueError(f"target sparsity must be in [0, 1), got {sparsity}")
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")


def _kth_abs(v: Tensor, k: int) -> float:
    """The ``k``-th smallest of ``|v|`` (``-1`` when ``k = 0``: nothing to zero)."""
    return float(torch.kthvalue(v.detach().abs().flatten().float(), k).values) if k >= 1 else -1.0


@torch.no_grad()
def target_thresholds(params: list[Tensor], sparsity: float, *, scope: str = "global") -> list[float]:
    """Per tensor, the ``tau`` for which zeroing ``|w| <= tau`` zeroes ``floor(sparsity n)`` entries (ties
    aside): ``n`` is each tensor's size (``"layer"``) or all tensors' together (``"global"``)."""
    _check_target(sparsity, scope)
    if sparsity == 0:  # nothing to zero (the warm-up before a ramp): skip the pass over the weights
        return [-1.0] * len(params)
    if scope == "layer":
        return [_kth_abs(p, math.floor(sparsity * p.numel())) for p in params]
    flat = torch.cat([p.detach().abs().flatten().float() for p in params])
    return [_kth_abs(flat, math.floor(sparsity * flat.numel()))] * len(params)


def target_zeros(numels: Sequence[int], sparsity: float, *, scope: str = "global") -> int:
    """How many zeros a target ``sparsity`` gives tensors of these sizes: ``floor(sparsity n)`` over all together
    (``"global"``) or the sum of each tensor's ``floor(sparsity n_i)`` (``"layer"``), as :func:`magnitude_masks`
    and :func:`target_thresholds` count them. Over the total size it is the sparsity a job can reach, a hair
    under ``sparsity`` unless ``sparsity n`` is a whole number."""
    _check_target(sparsity, scope)
    if scope == "layer":
        return sum(math.floor(sparsity * n) for n in numels)
    return math.floor(sparsity * sum(numels))


@torch.no_grad()
def magnitude_masks(params: Sequence[Tensor], sparsity: float, *, scope: str = "layer") -> list[Tensor]:
    """Keep-masks zeroing exactly ``floor(sparsity n)`` entries of smallest magnitude (ties by position), per
    tensor (``"layer"``) or over all tensors together (``"global"``)."""
    _check_target(sparsity, scope)
    if scope == "layer":
        return [_keep_largest(p.detach().flatten(), sparsity).view_as(p) for p in params]
    mask = _keep_largest(torch.cat([p.detach().flatten().float() for p in params]), sparsity)
    return [m.view_as(p) for m, p in zip(mask.split([p.numel() for p in params]), params, strict=True)]


def _keep_largest(flat: Tensor, sparsity: float) -> Tensor:
    """The mask keeping all but ``floor(sparsity n)`` entries of ``flat``: its largest magnitudes."""
    keep = flat.numel() - math.floor(sparsity * flat.numel())
    return top_s_mask(flat.unsqueeze(0), torch.tensor([keep], device=flat.device))[0]


def _group_dims(w: Tensor) -> list[int] | int:
    return list(range(1, w.dim())) if w.dim() > 1 else 0


def threshold_param(w: Tensor, *, lam: float, beta: float, penalty: str, a: float = 1.0) -> Tensor:
    """``T_mu(w)`` for one weight tensor; ``group_l1`` groups are output channels (dim 0)."""
    return apply_threshold(w, lam / beta, penalty, a, _group_dims(w))


def rvsm_pull_(
    params: list[Tensor],
    grads: list[Tensor],
    *,
    lam: float,
    beta: float,
    penalty: str,
    a: float = 1.0,
    foreach: bool | None = None,
) -> None:
    """``grad <- grad + beta (w - T_mu(w))`` for every pair, in place.

    ``w - T_mu(w)`` is ``clamp(w, -mu, mu)`` for l1 and ``w 1{|w| <= sqrt(2 mu)}`` for l0. With
    ``foreach`` (default: when the parameters are on CUDA, as ``torch.optim`` does) both are built from
    multi-tensor kernels, a handful of launches for all tensors; on the CPU, where those kernels loop
    over the tensors anyway, the per-tensor form needs fewer passes. TL1 and group-l1 go tensor by tensor.
    """
    if not params:
        return
    if penalty not in PENALTIES:
        raise ValueError(f"penalty must be one of {PENALTIES}, got {penalty!r}")
    if foreach is None:
        foreach = params[0].device.type == "cuda"
    mu = lam / beta
    diff: Sequence[Tensor]
    if penalty == "l1" and foreach:
        diff = torch._foreach_clamp_max(torch._foreach_clamp_min(params, -mu), mu)
    elif penalty == "l1":
        diff = [w.clamp(-mu, mu) for w in params]
    elif penalty == "l0" and foreach:
        m = torch._foreach_abs(params)
        torch._foreach_sub_(m, math.sqrt(2 * mu))
        torch._foreach_clamp_min_(m, 0.0)
        torch._foreach_sign_(m)  # 1 where kept (|w| > thr), 0 where thresholded (|w| <= thr, ties too: SPEC §2)
        torch._foreach_neg_(m)
        torch._foreach_add_(m, 1.0)  # 1 where thresholded
        diff = torch._foreach_mul(params, m)
    elif penalty == "l0":  # hardshrink is the hard threshold, fused: x where |x| > thr, else 0
        thr = math.sqrt(2 * mu)
        diff = [w - torch.nn.functional.hardshrink(w, thr) for w in params]
    else:
        diff = [w - threshold_param(w, lam=lam, beta=beta, penalty=penalty, a=a) for w in params]
    torch._foreach_add_(grads, diff, alpha=beta)


def hard_pull_(params: list[Tensor], grads: list[Tensor], thresholds: list[float], *, beta: float) -> None:
    """``grad <- grad + beta (w - u)`` with ``u = w 1{|w| > tau}`` for each tensor's own ``tau`` (target mode)."""
    for w, g, tau in zip(params, grads, thresholds, strict=True):
        if tau >= 0:
            g.add_(w - torch.nn.functional.hardshrink(w, tau), alpha=beta)


@torch.no_grad()
def starved_threshold(w: Tensor, kept: int, min_keep: float) -> float | None:
    """The floor under a threshold (lambda mode's guard): ``None`` when ``u = T_mu(w)`` keeps (``kept``) at least
    ``k = ceil(min_keep n)`` entries of ``w``; otherwise the hard threshold ``tau`` (the ``(n - k)``-th smallest
    ``|w|``) for which ``w 1{|w| > tau}`` keeps the ``k`` largest (ties aside), so no tensor is zeroed whole."""
    k = math.ceil(min_keep * w.numel())
    return None if kept >= k else _kth_abs(w, w.numel() - k)


class RVSM:
    """Wrap ``base`` (a ``torch.optim`` optimizer) with the RVSM pull; ``step``/``zero_grad``/state pass through.

    ``base``'s parameter groups may hold ``rvsm`` (bool), ``lam``, ``beta``, ``penalty`` and ``a``;
    missing keys take this constructor's values. With ``target_sparsity`` the threshold is adaptive (module
    docstring) and ``lam``/``penalty`` are unused; :attr:`target` is the sparsity in force (ramp it).
    ``min_keep`` (lambda mode; default 0, the seeds' method): a tensor whose ``T_mu(w)`` would keep fewer than
    ``ceil(min_keep n)`` entries takes ``u`` = its largest ``ceil(min_keep n)`` instead
    (:func:`starved_threshold`), so a threshold past a layer's weights cannot zero that layer.
    """

    def __init__(
        self,
        base: torch.optim.Optimizer,
        *,
        lam: float,
        beta: float,
        penalty: str = "l0",
        a: float = 1.0,
        target_sparsity: float | None = None,
        scope: str = "global",
        min_keep: float = 0.0,
    ) -> None:
        if not 0 <= min_keep < 1:
            raise ValueError(f"min_keep must be in [0, 1), got {min_keep}")
        if not lam >= 0:
            raise ValueError(f"lam must be >= 0, got {lam}")
        if not beta > 0:
            raise ValueError(f"beta must be > 0, got {beta}")
        if penalty not in PENALTIES:
            raise ValueError(f"penalty must be one of {PENALTIES}, got {penalty!r}")
        if not a > 0:
            raise ValueError(f"a must be > 0, got {a}")
        if target_sparsity is not None:
            _check_target(target_sparsity, scope)
        self.target, self.scope, self.min_keep = target_sparsity, scope, min_keep
        self.base = base
        defaults = {"rvsm": True, "lam": lam, "beta": beta, "penalty": penalty, "a": a}
        for g in base.param_groups:
            for k, v in defaults.items():
                g.setdefault(k, v)

    @property
    def param_groups(self) -> list[dict]:
        return self.base.param_groups

    def sparse_groups(self) -> Iterable[dict]:
        return (g for g in self.base.param_groups if g["rvsm"])

    def sparse_params(self) -> list[Tensor]:
        return [p for g in self.sparse_groups() for p in g["params"]]

    @torch.no_grad()
    def pull_(self) -> None:
        """Add ``beta (w - T_mu(w))`` (target mode: ``beta (w - u)``) to the gradients of the sparse groups."""
        if self.target is not None:
            params = self.sparse_params()
            taus = dict(zip(params, target_thresholds(params, self.target, scope=self.scope), strict=True))
            for g in self.sparse_groups():
                ps = [p for p in g["params"] if p.grad is not None]
                hard_pull_(ps, [p.grad for p in ps], [taus[p] for p in ps], beta=g["beta"])
            return
        for g in self.sparse_groups():
            ps = [p for p in g["params"] if p.grad is not None]
            starved = self._starved(ps, g)
            if starved:
                hard_pull_(
                    list(starved),
                    [p.grad for p in starved if p.grad is not None],
                    list(starved.values()),
                    beta=g["beta"],
                )
            pairs = [(p, p.grad) for p in ps if p not in starved]
            if pairs:
                ws, gs = zip(*pairs, strict=True)
                rvsm_pull_(list(ws), list(gs), lam=g["lam"], beta=g["beta"], penalty=g["penalty"], a=g["a"])

    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
            self.pull_()
            self.base.step()
            return loss
        self.pull_()
        return self.base.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none=set_to_none)

    def _starved(self, ps: list[Tensor], g: dict) -> dict[Tensor, float]:
        """The tensors of group ``g`` that ``T_mu`` would leave with fewer than ``min_keep`` of their entries,
        with the hard threshold that keeps that many (:func:`starved_threshold`)."""
        if not self.min_keep or not ps:
            return {}
        us = [threshold_param(p, lam=g["lam"], beta=g["beta"], penalty=g["penalty"], a=g["a"]) for p in ps]
        kept = torch.stack([torch.count_nonzero(u) for u in us]).tolist()  # one device sync per group and step
        taus = {p: starved_threshold(p, n, self.min_keep) for p, n in zip(ps, kept, strict=True)}
        return {p: tau for p, tau in taus.items() if tau is not None}

    @torch.no_grad()
    def sparse_weights(self) -> dict[Tensor, Tensor]:
        """``u = T_mu(w)`` of every sparse parameter (target mode: exactly ``floor(target n)`` zeros; lambda mode:
        with the ``min_keep`` floor)."""
        if self.target is not None:
            ps = self.sparse_params()
            return {p: p * m for p, m in zip(ps, magnitude_masks(ps, self.target, scope=self.scope), strict=True)}
        out = {}
        for g in self.sparse_groups():
            starved = self._starved(g["params"], g)
            for p in g["params"]:
                tau = starved.get(p)
                out[p] = (
                    threshold_param(p, lam=g["lam"], beta=g["beta"], penalty=g["penalty"], a=g["a"])
                    if tau is None
                    else torch.nn.functional.hardshrink(p, tau)
                )
        return out

    @torch.no_grad()
    def sparsify_(self) -> None:
        """``w <- u``: the exported model carries the sparse ``u`` (exact zeros)."""
        for p, u in self.sparse_weights().items():
            p.copy_(u)

    def state_dict(self) -> dict:
        return self.base.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.base.load_state_dict(state)


def split_parameters(model: nn.Module, names: list[str]) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """``(chosen, rest)``: the parameters named in ``names`` and all others. Unknown names raise."""
    params = dict(model.named_parameters())
    unknown = sorted(set(names) - set(params))
    if unknown:
        raise ValueError(f"unknown parameter names {unknown}; the model has {sorted(params)}")
    chosen = [params[n] for n in names]
    ids = {id(p) for p in chosen}
    return chosen, [p for p in params.values() if id(p) not in ids]


def rvsm_sgd(
    model: nn.Module,
    names: list[str],
    *,
    lr: float,
    lam: float,
    beta: float,
    penalty: str = "l0",
    a: float = 1.0,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
) -> RVSM:
    """RVSM on SGD (momentum, weight decay) for the parameters ``names``; the others train plainly."""
    sparse, rest = split_parameters(model, names)
    base = torch.optim.SGD(
        [{"params": sparse, "rvsm": True}, {"params": rest, "rvsm": False}],
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
    )
    return RVSM(base, lam=lam, beta=beta, penalty=penalty, a=a)


# ----------------------------------------------------------------------------- baselines
class ADMM:
    """ADMM pruning (SPEC §4, empirical variant) on top of ``base``.

    Every step the gradient gets ``rho (w - z + y)``; :meth:`update` (call it every epoch, say) sets
    ``z <- proj(w + y)`` (the top ``1 - sparsity`` magnitudes of each tensor, ``scope = "layer"``, or of all
    together, ``"global"``) and ``y <- y + w - z``. :meth:`prune_` ends with ``w <- proj(w)`` and returns the
    masks for fine-tuning.
    """

    def __init__(
        self,
        base: torch.optim.Optimizer,
        params: Sequence[Tensor],
        *,
        rho: float,
        sparsity: float,
        scope: str = "layer",
    ) -> None:
        if not rho > 0:
            raise ValueError(f"rho must be > 0, got {rho}")
        _check_target(sparsity, scope)
        self.base, self.params, self.rho, self.sparsity, self.scope = base, list(params), rho, sparsity, scope
        with torch.no_grad():
            self.z = self._project(self.params)
            self.y = [torch.zeros_like(p) for p in self.params]

    def _project(self, vs: list[Tensor]) -> list[Tensor]:
        return [v * m for v, m in zip(vs, magnitude_masks(vs, self.sparsity, scope=self.scope), strict=True)]

    @property
    def param_groups(self) -> list[dict]:
        return self.base.param_groups

    @torch.no_grad()
    def step(self) -> None:
        pairs = [(p, p.grad, z, y) for p, z, y in zip(self.params, self.z, self.y, strict=True) if p.grad is not None]
        for p, g, z, y in pairs:
            g.add_(p - z + y, alpha=self.rho)
        self.base.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def update(self) -> None:
        self.z = self._project([p + y for p, y in zip(self.params, self.y, strict=True)])
        for p, y, z in zip(self.params, self.y, self.z, strict=True):
            y += p - z

    @torch.no_grad()
    def prune_(self) -> list[Tensor]:
        masks = magnitude_masks(self.params, self.sparsity, scope=self.scope)
        for p, m in zip(self.params, masks, strict=True):
            p.mul_(m)
        return masks

    def state_dict(self) -> dict:
        return {"base": self.base.state_dict(), "z": self.z, "y": self.y}

    def load_state_dict(self, state: dict) -> None:
        self.base.load_state_dict(state["base"])
        self.z = [t.clone() for t in state["z"]]
        self.y = [t.clone() for t in state["y"]]


@torch.no_grad()
def apply_masks_(params: Sequence[Tensor], masks: Sequence[Tensor]) -> None:
    """Zero the pruned entries (after each fine-tuning step)."""
    for p, m in zip(params, masks, strict=True):
        p.mul_(m)
