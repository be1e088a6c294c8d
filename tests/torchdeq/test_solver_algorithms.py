"""Each solver's update rule against a plain dense implementation, and solver-specific options."""

from __future__ import annotations

import pytest
import torch
from problems import DTYPE, PROBLEMS, contraction

from torchdeq.solver import anderson_solver, broyden_solver, fixed_point_iter, get_solver, small


def tanh_cell(batch: int = 3, dim: int = 6, seed: int = 0):
    """``f(z) = tanh(W z + x)``, nonlinear and not a contraction in every direction."""
    w = contraction(batch, dim, 1.2, seed)
    x = torch.randn(batch, dim, generator=torch.Generator().manual_seed(seed + 1), dtype=DTYPE)
    return lambda z: torch.tanh((w @ z[..., None])[..., 0] + x)


def dense_anderson(f, z0, steps: int, m: int, lam: float, tau: float) -> list:
    """Anderson mixing written out: iterates ``z_0 ... z_steps``."""
    xs, gs, zs = [], [], [z0]
    z = z0
    for _ in range(steps):
        g = f(z) - z
        xs, gs = (xs + [z])[-m:], (gs + [g])[-m:]
        G = torch.stack(gs, dim=1)  # (B, n, D)
        H = G @ G.mT
        n = H.shape[-1]
        H = H * (1 + lam * torch.eye(n, dtype=DTYPE)) + 1e-30 * torch.eye(n, dtype=DTYPE)
        y = torch.linalg.solve(H, torch.ones(z.shape[0], n, 1, dtype=DTYPE))
        alpha = y / y.sum(dim=1, keepdim=True)
        z = (alpha.mT @ (torch.stack(xs, dim=1) + tau * G))[:, 0]
        zs.append(z)
    return zs


def dense_broyden(f, z0, steps: int) -> list:
    """Good Broyden with an explicit inverse Jacobian estimate: iterates ``z_0 ... z_steps``."""
    batch, dim = z0.shape
    M = -torch.eye(dim, dtype=DTYPE).repeat(batch, 1, 1)
    z, g, zs = z0, f(z0) - z0, [z0]
    for _ in range(steps):
        z_new = z - (M @ g[..., None])[..., 0]
        g_new = f(z_new) - z_new
        dz, dg = z_new - z, g_new - g
        v = (M.mT @ dz[..., None])[..., 0]
        u = (dz - (M @ dg[..., None])[..., 0]) / (v * dg).sum(-1, keepdim=True)
        M = M + u[..., None] * v[:, None, :]
        z, g = z_new, g_new
        zs.append(z)
    return zs


@pytest.mark.parametrize(("m", "lam", "tau"), [(6, 1e-4, 1.0), (3, 0.0, 1.0), (4, 1e-2, 0.7)])
def test_anderson_matches_dense_mixing(m: int, lam: float, tau: float):
    f = tanh_cell()
    z0 = torch.zeros(3, 6, dtype=DTYPE)
    expected = dense_anderson(f, z0, 12, m, lam, tau)
    steps = [1, 2, 5, m + 1, 12]
    _, states, _ = anderson_solver(
        f, z0, max_iter=12, tol=0.0, m=m, lam=lam, tau=tau, indexing=steps
    )
    for step, state in zip(steps, states, strict=True):
        torch.testing.assert_close(state, expected[step], atol=1e-12, rtol=1e-9)


def test_anderson_with_one_residual_is_fixed_point_iteration():
    f = tanh_cell()
    z0 = torch.zeros(3, 6, dtype=DTYPE)
    steps = [1, 4, 9]
    _, mixed, _ = anderson_solver(f, z0, max_iter=9, tol=0.0, m=1, tau=0.6, indexing=steps)
    _, plain, _ = fixed_point_iter(f, z0, max_iter=9, tol=0.0, tau=0.6, indexing=steps)
    for a, b in zip(mixed, plain, strict=True):
        torch.testing.assert_close(a, b, atol=1e-15, rtol=0)


def test_broyden_matches_dense_good_broyden():
    f = tanh_cell()
    z0 = torch.zeros(3, 6, dtype=DTYPE)
    expected = dense_broyden(f, z0, 11)
    steps = [1, 2, 3, 7, 11]
    _, states, _ = broyden_solver(f, z0, max_iter=11, tol=0.0, indexing=steps)
    for step, state in zip(steps, states, strict=True):
        torch.testing.assert_close(state, expected[step], atol=1e-12, rtol=1e-9)


@pytest.mark.parametrize("memory", [2, None])
@pytest.mark.parametrize("ls", [False, True])
def test_broyden_small_algebra_agrees_on_numpy_and_torch(monkeypatch, memory, ls: bool):
    # CPU solves do the (t x t) algebra on NumPy views; accelerators run it on tensors
    f = tanh_cell(seed=2)
    z0 = torch.zeros(3, 6, dtype=DTYPE)
    options = {"max_iter": 12, "tol": 0.0, "LBFGS_thres": memory, "ls": ls, "indexing": [5, 12]}
    _, on_numpy, _ = broyden_solver(f, z0, **options)
    monkeypatch.setattr(small, "np", None)
    assert isinstance(small.host(z0), torch.Tensor)
    _, on_torch, _ = broyden_solver(f, z0, **options)
    for a, b in zip(on_numpy, on_torch, strict=True):
        torch.testing.assert_close(a, b, atol=1e-13, rtol=0)


@pytest.mark.filterwarnings("error")
def test_broyden_flags_a_blow_up_without_warnings():
    # exp overflows to inf, inf - inf is NaN: reported in info, not as NumPy warnings
    z0 = torch.ones(3, 5)
    z_star, _, info = broyden_solver(lambda z: torch.exp(50 * z), z0, max_iter=10, tol=0.0)
    assert info["nonfinite"].all()
    assert torch.isfinite(z_star).all()


def test_broyden_solves_linear_system_in_few_steps():
    # good Broyden terminates on a linear problem in at most 2 * dim steps
    problem = PROBLEMS[0]
    dim = problem.x0.shape[1]
    z_star, _, info = broyden_solver(problem.func, problem.x0, max_iter=2 * dim + 1, tol=1e-11)
    torch.testing.assert_close(z_star, problem.solution, atol=1e-10, rtol=0)


@pytest.mark.parametrize("memory", [1, 3, None])
@pytest.mark.parametrize("ls", [False, True])
def test_broyden_limited_memory_and_line_search_converge(memory, ls: bool):
    f = tanh_cell(seed=4)
    z0 = torch.zeros(3, 6, dtype=DTYPE)
    z_star, _, info = broyden_solver(f, z0, max_iter=80, tol=1e-10, LBFGS_thres=memory, ls=ls)
    assert (info["abs_lowest"] < 1e-10).all()
    torch.testing.assert_close(f(z_star), z_star, atol=1e-9, rtol=0)


def test_broyden_line_search_backtracks_an_overshooting_step():
    # g(z) = -3 atan(z - 1): the first full step from 0 lands at 2.36, where |g| is larger
    f = lambda z: z - 3 * torch.atan(z - 1)  # noqa: E731
    z0 = torch.zeros(1, dtype=DTYPE)
    calls = []
    z_star, states, info = broyden_solver(
        lambda z: calls.append(None) or f(z), z0, max_iter=30, tol=1e-12, ls=True, indexing=[1]
    )
    assert states[0].item() == pytest.approx(0.75 * torch.pi / 2)  # the halved first step
    torch.testing.assert_close(z_star, torch.ones(1, dtype=DTYPE), atol=1e-12, rtol=0)
    assert len(calls) > info["abs_trace"].shape[1]


def test_broyden_memory_larger_than_max_iter_is_all():
    f = tanh_cell()
    z0 = torch.zeros(3, 6, dtype=DTYPE)
    a = broyden_solver(f, z0, max_iter=10, tol=0.0, LBFGS_thres=50)[0]
    b = broyden_solver(f, z0, max_iter=10, tol=0.0)[0]
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["fixed_point_iter", "anderson", "broyden"])
def test_solver_runs_vector_jacobian_product_closure(name: str):
    # the implicit backward pass solves g = J^T g + v with autograd inside the map
    f = tanh_cell(seed=7)
    z_star = broyden_solver(f, torch.zeros(3, 6, dtype=DTYPE), max_iter=60, tol=1e-12)[0]
    z = z_star.clone().requires_grad_()
    fz = f(z)
    v = torch.randn(3, 6, generator=torch.Generator().manual_seed(9), dtype=DTYPE)

    def vjp(g):
        return torch.autograd.grad(fz, z, g, retain_graph=True)[0] + v

    jac = torch.autograd.functional.jacobian(f, z_star)  # (B, D, B, D)
    jac = torch.stack([jac[b, :, b] for b in range(3)])
    exact = torch.linalg.solve(torch.eye(6, dtype=DTYPE) - jac.mT, v)
    g_star, _, info = get_solver(name)(vjp, torch.zeros_like(v), max_iter=200, tol=1e-12)
    torch.testing.assert_close(g_star, exact, atol=1e-10, rtol=0)
    assert not g_star.requires_grad
