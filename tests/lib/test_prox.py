"""Each thresholding operator against a brute-force grid minimiser of mu P(u) + 1/2 (u - x)^2."""

import math

import pytest
import torch

from rvsm import prox


def scalar_penalty(u: torch.Tensor, penalty: str, a: float) -> torch.Tensor:
    if penalty == "l1":
        return u.abs()
    if penalty == "l0":
        return (u != 0).double()
    return (a + 1) * u.abs() / (a + u.abs())


def brute_force(xs: torch.Tensor, mu: float, penalty: str, a: float = 1.0) -> torch.Tensor:
    """argmin over a grid (with 0 in it) for every ``x`` at once, refined twice around each best point:
    resolution ~1e-9."""

    def best_of(grid: torch.Tensor) -> torch.Tensor:  # grid: (len(xs), n)
        grid = torch.cat([grid, torch.zeros(len(xs), 1, dtype=torch.float64)], dim=1)
        obj = mu * scalar_penalty(grid, penalty, a) + 0.5 * (grid - xs[:, None]) ** 2
        return grid.gather(1, obj.argmin(dim=1, keepdim=True))[:, 0]

    r = float(xs.abs().max()) + 1.0
    best = best_of(torch.linspace(-r, r, 40_001, dtype=torch.float64).expand(len(xs), -1))
    for half in (4e-4, 4e-7):  # two coarse steps either side of the best point, on a grid 1,000 times finer
        best = best_of(best[:, None] + torch.linspace(-half, half, 4_001, dtype=torch.float64))
    return best


CASES = [
    ("l1", 1.0, [0.05, 0.3, 1.0]),
    ("l0", 1.0, [0.05, 0.3, 1.0]),
    # TL1: a=1 -> critical mu = a^2/(2(a+1)) = 0.25; a=0.5 -> 1/12; a=3 -> 1.125
    ("tl1", 1.0, [0.05, 0.2, 0.25, 0.4, 1.0]),
    ("tl1", 0.5, [0.02, 0.08, 0.3]),
    ("tl1", 3.0, [0.1, 0.9, 2.0]),
]


@pytest.mark.parametrize("penalty,a,mus", CASES)
def test_operator_is_the_grid_minimiser(penalty, a, mus):
    xs = torch.linspace(-3, 3, 61, dtype=torch.float64) + 0.0123
    for mu in mus:
        if penalty == "l1":
            thr = mu
        elif penalty == "l0":
            thr = math.sqrt(2 * mu)
        else:
            thr = float(prox.tl1_threshold_value(mu, a))
        out = prox.threshold(xs, mu, penalty=penalty, a=a)
        want = brute_force(xs, mu, penalty, a)
        for x, got, w in zip(xs.tolist(), out.tolist(), want.tolist(), strict=True):
            if abs(abs(x) - thr) < 1e-3:  # at a jump both sides minimise
                continue
            assert got == pytest.approx(w, abs=1e-6), (penalty, a, mu, x)


def test_tl1_regimes_both_exercised_and_super_critical_jumps():
    a = 1.0
    sub, sup = 0.2, 0.6  # critical value 0.25
    t_sub = prox.tl1_threshold_value(sub, a)
    t_sup = prox.tl1_threshold_value(sup, a)
    assert t_sub == pytest.approx(sub * (a + 1) / a)
    assert t_sup == pytest.approx(math.sqrt(2 * sup * (a + 1)) - a / 2)
    eps = 1e-7
    below_above = prox.tl1_threshold(
        torch.tensor([t_sub + eps, t_sup + eps], dtype=torch.float64),
        torch.tensor([sub, sup], dtype=torch.float64),
        a=a,
    )
    assert below_above[0].item() < 1e-5  # continuous: starts at 0
    assert below_above[1].item() > 0.1  # discontinuous: jumps


def test_hard_threshold_uses_sqrt_2mu_not_mu():
    mu = 0.1  # sqrt(0.2) = 0.447
    x = torch.tensor([0.2, 0.44, 0.45, -0.5], dtype=torch.float64)
    assert prox.hard_threshold(x, mu).tolist() == [0.0, 0.0, 0.45, -0.5]


def test_group_soft_threshold_against_2d_grid():
    torch.manual_seed(0)
    for mu in (0.1, 0.7, 2.0):
        x = torch.tensor([0.9, -0.6], dtype=torch.float64)

        def obj(u: torch.Tensor, mu: float = mu, x: torch.Tensor = x) -> torch.Tensor:
            return mu * torch.linalg.vector_norm(u, dim=-1) + 0.5 * ((u - x) ** 2).sum(-1)

        best = torch.zeros(2, dtype=torch.float64)
        half = 1.5
        for _ in range(6):
            g = torch.linspace(-half, half, 401, dtype=torch.float64)
            pts = torch.stack(torch.meshgrid(g + best[0], g + best[1], indexing="ij"), -1).reshape(-1, 2)
            pts = torch.cat([pts, torch.zeros(1, 2, dtype=torch.float64)])
            best = pts[obj(pts).argmin()]
            half /= 40
        got = prox.group_soft_threshold(x, mu)
        torch.testing.assert_close(got, best, atol=1e-6, rtol=0)


def test_group_rows_are_output_channels_and_batched_mu():
    w = torch.randn(4, 3, 2, 2, dtype=torch.float64)
    norms = torch.linalg.vector_norm(w, dim=(1, 2, 3))
    mu = norms[1].item()  # kills row 1 exactly, shrinks the rest
    out = prox.group_soft_threshold(w, mu)
    assert (out[1] == 0).all()
    for r in (0, 2, 3):
        torch.testing.assert_close(out[r], w[r] * max(1 - mu / norms[r].item(), 0))
    # per-row mu for a batch of vectors
    x = torch.randn(5, 7, dtype=torch.float64)
    mus = torch.rand(5, 1, dtype=torch.float64)
    rows = torch.stack([prox.soft_threshold(x[i], mus[i].item()) for i in range(5)])
    torch.testing.assert_close(prox.soft_threshold(x, mus), rows)


@pytest.mark.parametrize("penalty", prox.PENALTIES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_in_place_equals_out_of_place(penalty, dtype):
    x = torch.randn(3, 8, dtype=dtype)
    want = prox.threshold(x, 0.3, penalty=penalty, a=0.7)
    y = x.clone()
    ret = prox.threshold_(y, 0.3, penalty=penalty, a=0.7)
    assert ret is y
    torch.testing.assert_close(y, want)
    assert want.dtype == dtype


def test_penalty_values():
    u = torch.tensor([[0.0, 2.0, -1.0], [3.0, 0.0, 4.0]], dtype=torch.float64)
    assert prox.penalty_value(u, penalty="l0", dim=-1).tolist() == [2, 2]
    assert prox.penalty_value(u, penalty="l1", dim=-1).tolist() == [3, 7]
    tl1 = prox.penalty_value(u, penalty="tl1", a=1.0, dim=-1)
    torch.testing.assert_close(tl1, torch.tensor([2 * 2 / 3 + 2 * 1 / 2, 2 * 3 / 4 + 2 * 4 / 5], dtype=torch.float64))
    assert prox.penalty_value(u, penalty="group_l1", dim=-1, dims=-1).tolist() == pytest.approx([5**0.5, 5.0])
    assert prox.penalty_value(u, penalty="group_l1").item() == pytest.approx(5**0.5 + 5)


def test_bad_parameters_raise_value_error_with_the_value():
    x = torch.ones(3)
    with pytest.raises(ValueError, match="-0.5"):
        prox.soft_threshold(x, -0.5)
    with pytest.raises(ValueError, match="'l2'"):
        prox.threshold(x, 0.1, penalty="l2")
    with pytest.raises(ValueError, match="a must be > 0"):
        prox.tl1_threshold(x, 0.1, a=0.0)


def test_threshold_class_binds_the_penalty():
    x = torch.linspace(-2, 2, 41, dtype=torch.float64)
    t = prox.Threshold("tl1", a=0.5)
    torch.testing.assert_close(t(x, 0.3), prox.tl1_threshold(x, 0.3, a=0.5))
    assert t.value(x).item() == pytest.approx(prox.penalty_value(x, penalty="tl1", a=0.5).item())
    with pytest.raises(ValueError, match="'l3'"):
        prox.Threshold("l3")
