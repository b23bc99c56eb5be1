"""Closed-form losses and gradients against finite differences and Monte Carlo."""

import math

import pytest
import torch

from rvsm import problems, toy


def unit(v: torch.Tensor) -> torch.Tensor:
    return v / torch.linalg.vector_norm(v, dim=-1, keepdim=True)


@pytest.fixture
def vectors():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(4, 6, generator=g, dtype=torch.float64) * 1.3
    ws = unit(torch.randn(4, 6, generator=g, dtype=torch.float64))
    return w, ws


def test_angle_is_accurate_near_zero_and_nan_for_zero_vectors():
    v = torch.tensor([1.0, 0.0], dtype=torch.float64)
    for eps in (1e-3, 1e-7, 1e-10):
        u = torch.tensor([math.cos(eps), math.sin(eps)], dtype=torch.float64) * 3
        assert problems.angle(u, v).item() == pytest.approx(eps, rel=1e-9)
    assert problems.angle(-v, v).item() == pytest.approx(math.pi)
    assert math.isnan(problems.angle(torch.zeros(2, dtype=torch.float64), v).item())


@pytest.mark.parametrize("k", [1, 2, 5])
def test_relu_grad_matches_central_differences(vectors, k):
    w, ws = vectors
    g = problems.relu_grad(w, ws, k)
    h = 1e-6
    for j in range(w.shape[1]):
        e = torch.zeros_like(w)
        e[:, j] = h
        fd = (problems.relu_loss(w + e, ws, k) - problems.relu_loss(w - e, ws, k)) / (2 * h)
        torch.testing.assert_close(g[:, j], fd, rtol=1e-6, atol=1e-9)


def test_relu_loss_matches_monte_carlo(vectors):
    """E[(f(x;w) - f(x;w*))^2] by 400k samples: within 5 standard errors."""
    w, ws = vectors[0][0], vectors[1][0]
    k, d, m = 3, w.numel(), 400_000
    z = problems.sample_inputs(m, k, d, generator=torch.Generator().manual_seed(0))
    diff2 = (problems.relu_forward(w, z) - problems.relu_forward(ws, z)) ** 2
    mc, se = diff2.mean().item(), diff2.std().item() / math.sqrt(m)
    closed = problems.relu_loss(w, ws, k).item()
    assert abs(mc - closed) < 5 * se, (mc, closed, se)
    assert problems.relu_loss(torch.zeros_like(w), ws, k).item() == pytest.approx(problems.loss_at_zero("relu", k))


def test_relu_empirical_grad_is_autograd_of_the_sample_loss(vectors):
    w, ws = vectors
    z = torch.randn(4, 50, 2, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    g = problems.relu_empirical_grad(w, ws, z)
    h = 1e-6
    for j in range(6):
        e = torch.zeros_like(w)
        e[:, j] = h
        fd = (problems.relu_empirical_loss(w + e, ws, z) - problems.relu_empirical_loss(w - e, ws, z)) / (2 * h)
        torch.testing.assert_close(g[:, j], fd, rtol=1e-5, atol=1e-8)


def test_relu_empirical_grad_converges_to_the_closed_form(vectors):
    w, ws = vectors[0][1], vectors[1][1]
    k, m = 2, 400_000
    z = problems.sample_inputs(m, k, 6, generator=torch.Generator().manual_seed(2))
    g = problems.relu_empirical_grad(w, ws, z)
    closed = problems.relu_grad(w, ws, k)
    # per-coordinate standard error of the mean gradient, estimated from per-sample gradients
    resid = problems.relu_forward(w, z) - problems.relu_forward(ws, z)
    per = 2 * resid[:, None] * ((torch.einsum("mkd,d->mk", z, w) > 0).double()[..., None] * z).mean(1)
    se = per.std(0) / math.sqrt(m)
    assert ((g - closed).abs() < 5 * se).all(), (g, closed, se)


@pytest.mark.parametrize("k", [1, 4])
def test_binary_loss_matches_monte_carlo(vectors, k):
    w, ws = vectors[0][2], vectors[1][2]
    m = 400_000
    z = problems.sample_inputs(m, k, 6, generator=torch.Generator().manual_seed(4))
    per = 0.5 * (problems.binary_forward(w, z) - problems.binary_forward(ws, z)) ** 2
    mc, se = per.mean().item(), per.std().item() / math.sqrt(m)
    assert abs(mc - problems.binary_loss(w, ws, k).item()) < 5 * se
    # at w = 0 the network outputs 0: E[h(w*)^2]/2 = k(k+1)/8
    at0 = 0.5 * problems.binary_forward(ws, z) ** 2
    assert abs(at0.mean().item() - k * (k + 1) / 8) < 5 * at0.std().item() / math.sqrt(m)
    assert problems.binary_loss(torch.zeros_like(w), ws, k).item() == k * (k + 1) / 8


@pytest.mark.parametrize("scale", [1.0, 2.5])
def test_expected_coarse_gradient_matches_monte_carlo(vectors, scale):
    """Seed 001 eq. 15 (with the sqrt(2/pi) of eq. 8) against the mean of 400k sample coarse gradients."""
    w, ws = vectors[0][3] * scale, vectors[1][3]
    k, m = 3, 400_000
    z = problems.sample_inputs(m, k, 6, generator=torch.Generator().manual_seed(5))
    on_w = (torch.einsum("mkd,d->mk", z, w) > 0).double()
    on_s = (torch.einsum("mkd,d->mk", z, ws) > 0).double()
    per = problems.SQRT_2_OVER_PI * torch.einsum("mk,mkd->md", on_w * (on_w - on_s), z)
    mc, se = per.mean(0), per.std(0) / math.sqrt(m)
    closed = problems.binary_coarse_grad(w, ws, k)
    assert ((mc - closed).abs() < 5 * se).all(), (mc, closed, se)
    torch.testing.assert_close(problems.binary_empirical_coarse_grad(w, ws, z), mc)


def test_expected_coarse_gradient_on_the_sphere(vectors):
    w, ws = unit(vectors[0]), vectors[1]
    k = 7
    torch.testing.assert_close(problems.binary_coarse_grad(w, ws, k), k / (2 * math.pi) * (w - ws))


def test_teachers_and_inits():
    t = problems.make_teacher(10, seed=3, sparsity=4, values="equal")
    torch.testing.assert_close(t, torch.tensor([0.5] * 4 + [0.0] * 6, dtype=torch.float64))
    g = problems.make_teacher(10, seed=3, sparsity=4, values="gaussian")
    assert int((g != 0).sum()) == 4 and torch.linalg.vector_norm(g).item() == pytest.approx(1)
    e = problems.make_teacher(3, w_star=[3.0, 0.0, 4.0])
    assert e.tolist() == pytest.approx([0.6, 0.0, 0.8])
    assert problems.make_init(3, w0=[3.0, 0.0, 4.0]).tolist() == [3.0, 0.0, 4.0]
    torch.testing.assert_close(problems.make_teacher(5, seed=1), problems.make_teacher(5, seed=1))
    with pytest.raises(ValueError, match="all zeros"):
        problems.make_teacher(2, w_star=[0.0, 0.0])
    with pytest.raises(ValueError, match="d=3"):
        problems.make_teacher(3, w_star=[1.0])


def test_toy_problem_class_is_the_functional_forms(vectors):
    w, ws = vectors
    p = problems.ToyProblem("relu", k=3, w_star=ws)
    torch.testing.assert_close(p.loss(w), problems.relu_loss(w, ws, 3))
    torch.testing.assert_close(p.grad(w), problems.relu_grad(w, ws, 3))
    z = torch.randn(4, 20, 3, 6, dtype=torch.float64)
    torch.testing.assert_close(p.grad(w, z), problems.relu_empirical_grad(w, ws, z))
    b = problems.ToyProblem("binary", k=3, w_star=ws)
    torch.testing.assert_close(b.grad(w), problems.binary_coarse_grad(w, ws, 3))
    with pytest.raises(ValueError, match="'cnn'"):
        problems.ToyProblem("cnn", k=3, w_star=ws)


def _monte_carlo_coarse_gradient(w: torch.Tensor, ws: torch.Tensor, k: int, m: int, seed: int):
    """Mean and standard error of ``m`` sample coarse gradients (seed 001 eq. 8), computed here from scratch."""
    z = problems.sample_inputs(m, k, w.shape[-1], generator=torch.Generator().manual_seed(seed))
    on_w = (torch.einsum("mkd,d->mk", z, w) > 0).double()
    on_s = (torch.einsum("mkd,d->mk", z, ws) > 0).double()
    per = problems.SQRT_2_OVER_PI * torch.einsum("mk,mkd->md", on_w * (on_w - on_s), z)
    return per.mean(0), per.std(0) / math.sqrt(m)


@pytest.mark.parametrize("scale", [1.0, 0.3])
def test_expected_coarse_gradient_at_minus_w_star_is_k_over_pi_w_hat(vectors, scale):
    """theta = pi: eq. 15 is 0/0 there; the limit and the Monte Carlo mean are (k/pi) w_hat = -(k/pi) w*."""
    ws = vectors[1][0]
    w = -ws * scale
    k = 3
    closed = problems.binary_coarse_grad(w, ws, k)
    assert bool(torch.isfinite(closed).all())
    torch.testing.assert_close(closed, k / math.pi * unit(w))
    mc, se = _monte_carlo_coarse_gradient(w, ws, k, 200_000, seed=11)
    assert ((mc - closed).abs() < 5 * se + 1e-12).all(), (mc, closed, se)
    # the limit of seed 001's eq. 15 as w -> -w* along a path: the closed form is continuous there
    bend = unit(torch.randn(6, generator=torch.Generator().manual_seed(2), dtype=torch.float64))
    for eps in (1e-3, 1e-6):
        near = unit(-ws + eps * bend)
        theta = problems.angle(near, ws)
        s = near + ws
        eq15 = k / math.pi * (near - torch.cos(theta / 2) * s / torch.linalg.vector_norm(s))
        torch.testing.assert_close(problems.binary_coarse_grad(near, ws, k), eq15)
        assert torch.linalg.vector_norm(eq15 - closed).item() < 10 * eps


def test_expected_coarse_gradient_at_zero_is_zero(vectors):
    ws = vectors[1][0]
    w = torch.zeros(6, dtype=torch.float64)
    closed = problems.binary_coarse_grad(w, ws, 4)
    assert closed.tolist() == [0.0] * 6
    mc, _ = _monte_carlo_coarse_gradient(w, ws, 4, 2_000, seed=1)
    assert mc.tolist() == [0.0] * 6  # every indicator 1{Z_i . 0 > 0} is 0: each sample gradient is exactly 0


def test_relu_gradient_at_zero_is_autograds_value(vectors):
    """f has a |w| term, so no gradient at 0; both the closed form and autograd of the sample loss give 0."""
    ws = vectors[1][:2]
    w = torch.zeros(2, 6, dtype=torch.float64)
    closed = problems.relu_grad(w, ws, 3)
    assert closed.abs().max().item() == 0.0
    z = problems.sample_inputs(50, 3, 6, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(problems.relu_empirical_grad(w, ws, z.expand(2, -1, -1, -1)), closed)
    # batch rows away from 0 are unaffected
    mixed = torch.stack([torch.zeros(6, dtype=torch.float64), vectors[0][1]])
    torch.testing.assert_close(problems.relu_grad(mixed, ws, 3)[1], problems.relu_grad(vectors[0][1], ws[1], 3))


@pytest.mark.parametrize("tiny", [5e-324, 1e-200, 1e300])
def test_subnormal_and_huge_teachers_normalise(tiny):
    t = problems.make_teacher(3, w_star=[tiny, 0.0, -tiny])
    torch.testing.assert_close(t, torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64) / math.sqrt(2))


def test_equal_teacher_and_init_seeds_do_not_start_at_the_teacher():
    """Issue 11: the README's sweep used ``teacher.seed == init.seed`` and 9 of 27 runs started at w*.
    The teacher and the start draw from different streams, so equal seeds give unrelated vectors."""
    for seed in [0, 1, 2, 7, 2**64 - 1]:
        for d in (2, 10, 50):
            cos = float(problems.make_teacher(d, seed=seed) @ problems.make_init(d, seed=seed))
            assert abs(cos) < 0.999, (seed, d, cos)
    # through the spec, as a user writes it: the first trace point's angle is far from 0
    spec = {
        "network": "relu",
        "k": 2,
        "d": 10,
        "lam": 1e-4,
        "beta": 4e-3,
        "eta": 0.1,
        "max_iters": 3,
        "teacher": {"seed": 4},
        "init": {"seed": 4},
        "log_every": 1,
    }
    first = toy.run_spec(spec)["trace"]["theta_w"][0]
    assert first > 0.1, first
    # each stream is reproducible and differs from the other
    torch.testing.assert_close(problems.make_init(7, seed=3), problems.make_init(7, seed=3))
    with pytest.raises(ValueError, match="seed"):
        problems.stream("init", -1)
