"""Target sparsity, exported-module training and the job-preparation rules, against independent oracles."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from benchmarks.user_models import ResidualCNN, TabularMLP, export
from rvsm import data as rdata
from rvsm import exported, models, optim
from rvsm.checkpoints import read_state_dict, unwrap
from rvsm.errors import InputError
from rvsm.prepare import select_parameters
from rvsm.train import ResultRejected, TrainConfig, check_result, ramped_target, train


def tensors(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(6, 5, generator=g) * s for s in (0.1, 1.0, 3.0)] + [torch.randn(17, generator=g)]


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9, 0.97])
def test_thresholds_and_masks_against_sorting(p):
    ts = tensors()
    # layer scope: each tensor's own floor(p n) smallest magnitudes
    for t, tau, m in zip(
        ts, optim.target_thresholds(ts, p, scope="layer"), optim.magnitude_masks(ts, p, scope="layer"), strict=True
    ):
        k = math.floor(p * t.numel())
        oracle = sorted(t.abs().flatten().tolist())
        assert int((t.abs() <= tau).sum()) == k and (k == 0 or tau == oracle[k - 1])
        assert int((~m).sum()) == k and (k == 0 or t.abs()[~m].max() <= t.abs()[m].min())
    # global scope: floor(p N) over all tensors together, the smallest magnitudes wherever they are
    allabs = torch.cat([t.abs().flatten() for t in ts])
    k = math.floor(p * allabs.numel())
    tau = optim.target_thresholds(ts, p, scope="global")[0]
    assert tau == sorted(allabs.tolist())[k - 1]
    masks = optim.magnitude_masks(ts, p, scope="global")
    pruned = torch.cat([t.abs()[~m] for t, m in zip(ts, masks, strict=True)])
    kept = torch.cat([t.abs()[m] for t, m in zip(ts, masks, strict=True)])
    assert pruned.numel() == k and pruned.max() <= kept.min()


def test_target_pull_is_beta_times_w_minus_u():
    ts = [nn.Parameter(t.clone()) for t in tensors(1)]
    for t in ts:
        t.grad = torch.zeros_like(t)
    opt = optim.RVSM(torch.optim.SGD(ts, lr=0.1), lam=0.0, beta=0.7, target_sparsity=0.8, scope="global")
    opt.pull_()
    masks = optim.magnitude_masks(ts, 0.8, scope="global")  # no ties: the exact top-k is the threshold's u
    for t, m in zip(ts, masks, strict=True):
        assert torch.allclose(t.grad, 0.7 * (t.detach() - t.detach() * m))
    u = opt.sparse_weights()
    assert sum(int((v == 0).sum()) for v in u.values()) == math.floor(0.8 * sum(t.numel() for t in ts))


def test_cubic_ramp():
    p, start, T = 0.9, 10, 40
    assert ramped_target(p, 0, start, T) == 0 and ramped_target(p, start, start, T) == 0
    assert ramped_target(p, start + T // 2, start, T) == pytest.approx(p * (1 - 0.5**3))
    assert ramped_target(p, start + T, start, T) == p and ramped_target(p, 10**6, start, T) == p
    values = [ramped_target(p, s, start, T) for s in range(0, 60)]
    assert values == sorted(values)  # never decreasing


def _target_model(kind: str) -> tuple[nn.Module, list[str] | None]:
    """A built-in mlp, or a user's MLP exported and loaded as the service loads it (with its sparsified names)."""
    if kind == "built-in":
        return models.build("mlp", num_classes=3, in_features=64, hidden=[40, 20]), None
    exp = exported.load(export(TabularMLP(), torch.randn(2, 64)))
    return exp.module, exported.sparsifiable_parameters(exp.module)


def assert_at_target(sparsity: dict, p: float, scope: str, *, min_tensors: int) -> None:
    """The contract on a report: floor(p n_i) zeros in each tensor (layer scope), or floor(p n) over all of them
    to within one entry per tensor (global)."""
    layers = [sparsity["layers"][n] for n in sparsity["prunable_names"]]
    assert len(layers) >= min_tensors
    if scope == "layer":
        assert all(v["zeros"] == math.floor(p * v["numel"]) for v in layers)
    else:
        n = sum(v["numel"] for v in layers)
        assert abs(sum(v["zeros"] for v in layers) - math.floor(p * n)) <= len(layers)


ALGORITHMS = {  # every way a target is reached, each at its defaults otherwise
    "rvsm": {"algorithm": "rvsm"},  # warm-up, ramp, then the masked tail (5 epochs: 0 + 2 + 1)
    "rvsm-no-tail": {"algorithm": "rvsm", "tail_epochs": 0},
    "gmp": {"algorithm": "magnitude"},  # gradual, the default
    "magnitude-one-shot": {"algorithm": "magnitude", "pruning": "one_shot"},
    "admm": {"algorithm": "admm"},
}


@pytest.mark.parametrize("model", ["built-in", "exported"])
@pytest.mark.parametrize("finetune", [0, 1])
@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_training_ends_at_the_target(algorithm, scope, finetune, model):
    """Issue 18's contract: every algorithm that takes target_sparsity ends there (to one entry per tensor), for
    every scope, with and without fine-tuning (magnitude and admm without it used to return dense networks)."""
    data = rdata.synthetic(300, num_classes=3, seed=1)
    if model == "exported":
        data = rdata.from_tensors(data.x_train.flatten(1), data.y_train, data.x_val.flatten(1), data.y_val)
    torch.manual_seed(0)
    m, names = _target_model(model)
    cfg = TrainConfig(
        **ALGORITHMS[algorithm],
        target_sparsity=0.85,
        sparsity_scope=scope,
        epochs=5,
        finetune_epochs=finetune,
        params=names,
    )
    r = train(m, data, cfg)
    assert_at_target(r.sparsity, 0.85, scope, min_tensors=2)


@pytest.mark.parametrize("finetune", [0, 1])
@pytest.mark.parametrize("scope", ["global", "layer"])
def test_rvscgd_ends_at_the_target(scope, finetune):
    """The same contract for RVSCGD, the one algorithm that needs a binarized built-in (lenet5_binary)."""
    data = rdata.synthetic(300, num_classes=3, seed=1)  # (N, 1, 8, 8) images
    torch.manual_seed(0)
    m = models.build("lenet5_binary", num_classes=3, in_channels=1, input_size=8)
    r = train(
        m,
        data,
        TrainConfig(algorithm="rvscgd", target_sparsity=0.85, sparsity_scope=scope, epochs=5, finetune_epochs=finetune),
    )
    assert_at_target(r.sparsity, 0.85, scope, min_tensors=3)


def test_a_network_of_zeros_is_rejected_not_returned():
    """lam mode with a threshold past every weight zeroes the network when its floor is off (min_keep 0): the job
    fails saying so. At the default floor every tensor keeps its largest ceil(1% n) entries instead."""
    data = rdata.synthetic(200, num_classes=3, seed=1)
    torch.manual_seed(0)
    m = models.build("mlp", num_classes=3, in_features=64, hidden=[16])
    with pytest.raises(ResultRejected, match="every one of the .* sparsified weights is zero"):
        train(m, data, TrainConfig(algorithm="rvsm", lam=50.0, beta=1.0, epochs=1, min_keep=0.0))
    torch.manual_seed(0)
    m = models.build("mlp", num_classes=3, in_features=64, hidden=[16])
    r = train(m, data, TrainConfig(algorithm="rvsm", lam=50.0, beta=1.0, epochs=1))
    for name in r.sparsity["prunable_names"]:
        v = r.sparsity["layers"][name]
        assert v["numel"] - v["zeros"] == math.ceil(0.01 * v["numel"]), name


@pytest.mark.parametrize("penalty", ["l0", "l1", "tl1", "group_l1"])
def test_min_keep_floor_against_sorting(penalty):
    """The floor under lambda mode's threshold: a tensor T_mu would zero (nearly) whole keeps exactly its largest
    ceil(min_keep n) entries (found by sorting); a tensor T_mu leaves enough of keeps T_mu(w); the pull is
    beta (w - u) for that u."""
    g = torch.Generator().manual_seed(3)
    small, big = nn.Parameter(torch.randn(20, 10, generator=g) * 1e-3), nn.Parameter(torch.randn(8, 5, generator=g))
    for p in (small, big):
        p.grad = torch.zeros_like(p)
    opt = optim.RVSM(torch.optim.SGD([small, big], lr=0.1), lam=0.02, beta=1.0, penalty=penalty, min_keep=0.05)
    u = opt.sparse_weights()
    k = math.ceil(0.05 * small.numel())
    order = sorted(range(small.numel()), key=lambda i: -abs(float(small.detach().flatten()[i])))
    oracle = torch.zeros(small.numel())
    oracle[order[:k]] = small.detach().flatten()[order[:k]]
    assert torch.equal(u[small].flatten(), oracle)
    assert torch.equal(u[big], optim.threshold_param(big.detach(), lam=0.02, beta=1.0, penalty=penalty))
    assert int(torch.count_nonzero(u[big])) >= math.ceil(0.05 * big.numel())
    opt.pull_()
    for p in (small, big):
        assert torch.allclose(p.grad, p.detach() - u[p])


def test_a_result_short_of_its_target_is_rejected():
    layers = {"a": {"numel": 100, "zeros": 80}, "b": {"numel": 10, "zeros": 9}}
    report = {"layers": layers, "prunable_names": ["a", "b"]}
    check_result(report, TrainConfig(algorithm="magnitude", target_sparsity=0.8))  # 89 >= floor(0.8 * 110) - 2
    layers["a"]["zeros"] = 10
    with pytest.raises(ResultRejected, match="19 zeros of 110, short of the 88"):
        check_result(report, TrainConfig(algorithm="magnitude", target_sparsity=0.8))


def test_regression_task():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 10, generator=g)
    y = x @ torch.randn(10, 2, generator=g) + 0.01 * torch.randn(400, 2, generator=g)
    data = rdata.from_tensors(x, y, task="regression")
    assert data.num_outputs == 2 and data.sample_shape == (10,)
    torch.manual_seed(0)
    m = models.build("mlp", num_classes=2, in_features=10, hidden=[32])
    r = train(m, data, TrainConfig(algorithm="rvsm", target_sparsity=0.5, epochs=15, task="regression", lr=0.02))
    assert r.metric == "mse" and r.score_after < 0.2 * rdata.baseline_score(data) and not r.collapsed
    with torch.no_grad():  # the reported MSE is the MSE
        assert r.score_after == pytest.approx(float(((m(data.x_val) - data.y_val) ** 2).mean()), rel=1e-5)


def test_exported_module_switches_train_and_eval():
    torch.manual_seed(0)
    net = ResidualCNN()
    e = exported.load(export(net, torch.randn(4, 1, 8, 8)))
    x = torch.randn(16, 1, 8, 8)
    e.module.train()
    a, b = e.module(x), e.module(x)
    assert not torch.equal(a, b)  # dropout is active
    assert not torch.equal(e.module.state_dict()["bn.running_mean"], net.state_dict()["bn.running_mean"])  # BN learns
    e.module.eval()
    net.load_state_dict(e.module.state_dict())
    net.eval()
    with torch.no_grad():
        assert torch.allclose(e.module(x), net(x), atol=1e-6) and torch.equal(e.module(x), e.module(x))
    assert exported.sparsifiable_parameters(e.module) == ["stem.weight", "body.weight", "head.weight"]


def test_params_globs():
    m = TabularMLP()
    assert select_parameters(m, ["fc*.weight"]) == ["fc1.weight", "fc2.weight"]
    assert select_parameters(m, ["out.weight", "fc1.*"]) == ["fc1.weight", "fc1.bias", "out.weight"]
    with pytest.raises(InputError, match="params"):
        select_parameters(m, ["conv*"])


def test_state_dict_normalisation_and_errors():
    sd = {"a.weight": torch.ones(2)}
    got = unwrap({"state_dict": {"module._orig_mod.a.weight": torch.ones(2)}, "epoch": 1})
    assert got.tensors.keys() == sd.keys() and len(got.normalised) == 3
    with pytest.raises(InputError, match="not tensors"):
        unwrap({"a.weight": torch.ones(2), "step": 3})
    with pytest.raises(InputError, match="empty"):
        read_state_dict(b"")


@pytest.mark.parametrize("penalty", ["l0", "l1"])
def test_foreach_pull_equals_the_per_tensor_pull_ties_included(penalty):
    """The multi-tensor kernels (CUDA's default, run here on the CPU) against the per-tensor form, with entries
    exactly at the l0 threshold sqrt(2 mu), which SPEC §2 sets to zero."""
    lam, beta = 5e-5, 0.01
    thr = math.sqrt(2 * lam / beta)
    g = torch.Generator().manual_seed(0)
    params = [torch.tensor([thr, -thr, 0.5, 0.01, 0.0], dtype=torch.float64), torch.randn(7, 3, generator=g) * 0.1]
    pulled = []
    for foreach in (True, False):
        grads = [torch.zeros_like(p) for p in params]
        optim.rvsm_pull_(params, grads, lam=lam, beta=beta, penalty=penalty, foreach=foreach)
        pulled.append(grads)
    for a, b in zip(*pulled, strict=True):
        assert torch.equal(a, b)
    if penalty == "l0":  # at the threshold u = 0, so the pull is beta * w
        assert pulled[0][0][:2].tolist() == [beta * thr, -beta * thr]


def test_rvsm_fine_tunes_with_its_zeros_held():
    data = rdata.synthetic(300, num_classes=3, seed=1)
    torch.manual_seed(0)
    m = models.build("mlp", num_classes=3, in_features=64, hidden=[40, 20])
    names = models.default_sparse_parameters(m)
    seen: list[dict] = []

    def keep_zeros(ev: dict) -> None:
        seen.append({n: (t == 0).clone() for n, t in ev["state"]["model"].items() if n in names})

    cfg = TrainConfig(algorithm="rvsm", target_sparsity=0.8, epochs=2, finetune_epochs=2, sparsity_scope="layer")
    r = train(m, data, cfg, callback=keep_zeros)
    assert [p["epoch"] for p in r.trace] == [1, 2, 3, 4]
    # the zeros set when fine-tuning starts (w <- u) are the final zeros: held through the fine-tuning
    assert all(torch.equal(seen[2][n], seen[3][n]) for n in names)
    assert all(r.sparsity["layers"][n]["zeros"] == math.floor(0.8 * r.sparsity["layers"][n]["numel"]) for n in names)


def test_training_leaves_the_denormal_setting_as_it_found_it():
    """train() flushes denormals while it runs; the toy problems after it still see subnormal numbers."""
    tiny = torch.tensor(1e-310, dtype=torch.float64)
    assert float(tiny * 1.0) != 0.0
    data = rdata.synthetic(60, num_classes=2, seed=0)
    train(models.build("mlp", num_classes=2, in_features=64, hidden=[4]), data, TrainConfig(algorithm="sgd", epochs=1))
    assert float(tiny * 1.0) != 0.0


def _zeros_each_epoch(cfg: TrainConfig) -> tuple[list[dict[str, torch.Tensor]], object]:
    data = rdata.synthetic(300, num_classes=3, seed=1)
    torch.manual_seed(0)
    m = models.build("mlp", num_classes=3, in_features=64, hidden=[40, 20])
    names = models.default_sparse_parameters(m)
    seen: list[dict[str, torch.Tensor]] = []
    r = train(
        m,
        data,
        cfg,
        callback=lambda ev: seen.append({n: (t == 0).clone() for n, t in ev["state"]["model"].items() if n in names}),
    )
    return seen, r


def test_gradual_magnitude_pruning_follows_the_cubic_ramp_and_only_adds_zeros():
    """GMP (the magnitude default): at each epoch's end the pruned set holds floor(p_t n) zeros for the ramp's
    p_t at the epoch's last step, and every zero stays a zero (the masks only grow)."""
    cfg = TrainConfig(
        algorithm="magnitude", target_sparsity=0.8, epochs=6, warmup_epochs=1, ramp_epochs=3, batch_size=40
    )
    seen, r = _zeros_each_epoch(cfg)
    steps = math.ceil(240 / 40)
    n = sum(z.numel() for z in seen[0].values())
    for epoch, zeros in enumerate(seen, start=1):
        p = ramped_target(0.8, epoch * steps - 1, 1 * steps, 3 * steps)
        assert sum(int(z.sum()) for z in zeros.values()) == math.floor(p * n), epoch
    for before, after in zip(seen, seen[1:], strict=False):
        assert all(bool((after[k] | ~before[k]).all()) for k in before)  # a zero before is a zero after
    assert r.sparsity["prunable"] == pytest.approx(math.floor(0.8 * n) / n)


def test_rvsm_tail_trains_u_with_its_zeros_held():
    """RVSM's target default ends with a masked tail of a fifth of the epochs: w <- u when it starts, the zeros
    held to the end, and the network scored is the exported one (w equals u there)."""
    cfg = TrainConfig(algorithm="rvsm", target_sparsity=0.8, epochs=10, sparsity_scope="layer")
    assert (cfg.warmup, cfg.ramp, cfg.tail) == (1, 4, 2)
    seen, r = _zeros_each_epoch(cfg)
    assert all(torch.equal(seen[8][k], seen[9][k]) for k in seen[8])  # held through the tail
    assert not any(bool(z.any()) for z in seen[7].values())  # before it, w has no exact zeros (u carries them)
    assert all(int(z.sum()) == math.floor(0.8 * z.numel()) for z in seen[8].values())
    for point in r.trace[8:]:
        assert point["val_accuracy"] == point["val_accuracy_u"] and point["sparsity_u"] == pytest.approx(0.8, 0.01)


@pytest.mark.parametrize("rows", [1, 7, 64, 300, 1437, 10_000, 10**6])
@pytest.mark.parametrize("epochs", [1, 2, 5, 10, 30, 100])
def test_default_batch_size_is_counted_in_steps(rows, epochs):
    """The default batch: the largest candidate whose epochs give at least MIN_STEPS optimizer steps (counted
    here by brute force), the smallest candidate when none does; a batch given is kept."""
    from rvsm.train import BATCH_SIZES, MIN_STEPS, default_batch_size

    enough = [b for b in BATCH_SIZES if sum(1 for _ in range(0, rows, b)) * epochs >= MIN_STEPS]
    assert default_batch_size(rows, epochs) == (max(enough) if enough else min(BATCH_SIZES))
    cfg = TrainConfig(algorithm="sgd", epochs=epochs)
    assert cfg.batch_size is None and cfg.resolved(rows).batch == default_batch_size(rows, epochs)
    assert TrainConfig(algorithm="sgd", epochs=epochs, batch_size=3).resolved(rows).batch == 3


def test_lambda_past_the_cliff_is_warned_about():
    """lam / beta at or past CLIFF_MU (l0, layer-scaled thresholds: where the benchmark models fell to near chance)
    puts a line in the result's warnings; below it, with a target, or with other penalties, nothing."""
    from rvsm.train import CLIFF_MU, lam_warnings

    beta = 0.1
    past = TrainConfig(algorithm="rvsm", lam=CLIFF_MU * beta, beta=beta)
    assert len(lam_warnings(past)) == 1 and f"{CLIFF_MU}" in lam_warnings(past)[0]
    assert lam_warnings(TrainConfig(algorithm="rvsm", lam=0.99 * CLIFF_MU * beta, beta=beta)) == []
    assert lam_warnings(TrainConfig(algorithm="rvsm", target_sparsity=0.9)) == []
    assert lam_warnings(TrainConfig(algorithm="rvsm", lam=10.0, penalty="l1")) == []
    data = rdata.synthetic(200, num_classes=3, seed=1)
    torch.manual_seed(0)
    m = models.build("mlp", num_classes=3, in_features=64, hidden=[16])
    r = train(m, data, TrainConfig(algorithm="rvsm", lam=2 * CLIFF_MU * beta, beta=beta, epochs=1))
    assert r.warnings and r.warnings == lam_warnings(TrainConfig(algorithm="rvsm", lam=2 * CLIFF_MU * beta, beta=beta))
