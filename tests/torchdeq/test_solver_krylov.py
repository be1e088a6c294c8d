"""GMRES and BiCGStab: affine fixed points, exact implicit gradients, the backward-only guard."""

from __future__ import annotations

import pytest
import torch
from problems import DTYPE, PROBLEMS, affine, contraction

from torchdeq import get_deq
from torchdeq.grad import backward_factory
from torchdeq.solver import bicgstab_solver, get_solver, gmres_solver, is_backward_only
from torchdeq.utils.checks import OptionError

KRYLOV = {"gmres": {}, "gmres_short": dict(restart=3), "bicgstab": {}}


def solver_of(key: str):
    return get_solver(key.split("_")[0]), KRYLOV[key]


def dense_implicit_grad(f, z_star: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``(I - J_f(z*))^-T w`` from the dense Jacobian of the whole batch."""
    n = z_star.numel()
    jac = torch.autograd.functional.jacobian(lambda z: f(z.view_as(z_star)).reshape(-1),
                                             z_star.reshape(-1))
    y = torch.linalg.solve((torch.eye(n, dtype=DTYPE) - jac).T, w.reshape(-1))
    return y.view_as(z_star)


@pytest.mark.parametrize("key", list(KRYLOV))
@pytest.mark.parametrize("problem", [affine(), affine(norm=0.99, dim=24, seed=4)],
                         ids=["affine", "affine_0.99"])
def test_krylov_solves_affine_fixed_points(key, problem):
    solver, opts = solver_of(key)
    z, _, info = solver(problem.func, problem.x0, max_iter=300, tol=1e-12, **opts)
    torch.testing.assert_close(z, problem.solution, atol=1e-9, rtol=1e-9)
    assert bool((info["abs_lowest"] < 1e-12).all())


def test_unrestarted_gmres_is_exact_after_the_dimension():
    problem = affine(batch=2, dim=10, norm=0.999, seed=2)
    # the first call measures x0; then one Krylov vector per call
    z, _, info = gmres_solver(problem.func, problem.x0, max_iter=11, tol=0.0, restart=10)
    torch.testing.assert_close(z, problem.solution, atol=1e-10, rtol=1e-10)
    # and the residual never grows within a cycle
    trace = info["abs_trace"]
    assert bool((trace[:, 1:] <= trace[:, :-1] * (1 + 1e-9) + 1e-14).all())


@pytest.mark.parametrize("hook_ift", [False, True])
@pytest.mark.parametrize("key", list(KRYLOV))
@pytest.mark.parametrize("problem", PROBLEMS, ids=lambda p: p.name)
def test_krylov_ift_gradient_equals_the_dense_implicit_gradient(problem, key, hook_ift):
    solver_key = key.split("_")[0]
    theta = torch.zeros_like(problem.x0, requires_grad=True)

    def f(z):
        return problem.func(z) + theta

    z_star = problem.solution.clone()
    w = torch.linspace(-1, 2, z_star.numel(), dtype=DTYPE).view_as(z_star)
    opts = dict(max_iter=200, tol=1e-14, **KRYLOV[key])
    grad_fn = backward_factory("ift", hook_ift=hook_ift, b_solver=solver_key, b_solver_kwargs=opts)
    (w * grad_fn(None, f, z_star)[-1]).sum().backward()
    expected = dense_implicit_grad(problem.func, z_star, w)
    torch.testing.assert_close(theta.grad, expected, atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("name", ["gmres", "bicgstab"])
def test_deq_with_krylov_backward_matches_dense_parameter_gradients(name):
    torch.manual_seed(0)
    lin = torch.nn.Linear(6, 6).double()
    with torch.no_grad():
        lin.weight.mul_(0.95 / torch.linalg.matrix_norm(lin.weight, ord=2))
    x = torch.randn(3, 6, dtype=DTYPE)

    def f(z):
        return torch.tanh(lin(z) + x)

    deq = get_deq(f_solver="anderson", f_max_iter=200, f_tol=1e-13, ift=True, b_solver=name,
                  b_max_iter=100, b_tol=1e-13)
    z = deq(f, torch.zeros(3, 6, dtype=DTYPE))[0][-1]
    z.pow(2).sum().backward()
    got = lin.weight.grad.clone()
    lin.weight.grad = None
    # exact: dL/dW = sum over samples of (df/dW)^T y, y = (I - J)^-T dL/dz
    z_star = z.detach()
    y = dense_implicit_grad(f, z_star, 2 * z_star)
    zr = z_star.clone().requires_grad_()
    torch.autograd.backward(f(zr), y)
    torch.testing.assert_close(got, lin.weight.grad, atol=1e-9, rtol=1e-8)


@pytest.mark.parametrize("key", list(KRYLOV))
def test_a_converged_sample_stops_changing(key):
    solver, opts = solver_of(key)
    a = torch.cat([contraction(1, 40, 0.2, 0), contraction(1, 40, 0.995, 1)])
    b = torch.randn(2, 40, generator=torch.Generator().manual_seed(5), dtype=DTYPE)

    def h(y):
        return (a @ y[..., None])[..., 0] + b

    x0 = torch.zeros(2, 40, dtype=DTYPE)
    short = solver(h, x0, max_iter=14, tol=1e-9, **opts)
    long = solver(h, x0, max_iter=60, tol=1e-9, **opts)
    easy = short[2]["nstep"][0]
    assert easy < 14 and short[2]["abs_lowest"][0] < 1e-9
    assert short[2]["abs_lowest"][1] > 1e-9  # the hard sample was still running
    assert torch.equal(short[0][0], long[0][0])
    assert long[2]["nstep"][0] == easy


@pytest.mark.parametrize("name", ["gmres", "bicgstab"])
def test_krylov_solver_is_refused_as_forward_solver(name):
    assert is_backward_only(name)
    with pytest.raises(OptionError, match=rf"f_solver '{name}'.*b_solver"):
        get_deq(f_solver=name)
    assert get_deq(f_solver="anderson", b_solver=name, ift=True).b_solver_name == name


def test_krylov_options_are_checked():
    with pytest.raises(OptionError, match="restart"):
        gmres_solver(torch.cos, torch.zeros(2), restart=0)
    with pytest.raises(OptionError, match="'restart'"):
        bicgstab_solver(torch.cos, torch.zeros(2), restart=4)
    with pytest.raises(OptionError, match="'m'"):
        backward_factory("ift", b_solver="gmres", b_solver_kwargs=dict(m=3))
    assert not is_backward_only("anderson")
