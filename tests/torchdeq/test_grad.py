"""Gradients: IFT against the exact implicit gradient, phantom gradients against unrolling."""

import pytest
import torch

from torchdeq.core import get_deq
from torchdeq.grad import backward_factory
from torchdeq.utils.checks import OptionError

D, B = 5, 3


@pytest.fixture(autouse=True)
def _float64():
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    yield
    torch.set_default_dtype(torch.float32)


def make_problem():
    W = torch.nn.Parameter(0.5 * torch.randn(D, D) / D**0.5)
    U = torch.nn.Parameter(torch.randn(D, D) / D**0.5)
    x = torch.randn(B, D, requires_grad=True)
    c = torch.randn(B, D)

    def f(z):
        return torch.tanh(z @ W.T + x @ U.T)

    return f, (W, U, x), c


def exact_implicit_grads(f, params, c):
    """dL/dtheta with L = <c, z*>, through a dense solve of (I - J^T) y = c per sample."""
    z = torch.zeros(B, D)
    for _ in range(500):
        z = f(z)
    z = z.detach().requires_grad_()
    f_z = f(z)
    J = torch.autograd.functional.jacobian(f, z.detach())  # (B, D, B, D): rows independent
    ys = [torch.linalg.solve(torch.eye(D) - J[b, :, b, :].T, c[b]) for b in range(B)]
    return torch.autograd.grad(f_z, params, torch.stack(ys))


#: The three ways to ask for implicit differentiation: autograd.Function, hook, hook alone.
IFT_FLAGS = [{"ift": True}, {"ift": True, "hook_ift": True}, {"hook_ift": True}]
IFT_IDS = ["function", "hook", "hook_only"]


@pytest.mark.parametrize("flags", IFT_FLAGS, ids=IFT_IDS)
@pytest.mark.parametrize("core", ["indexing", "sliced"])
@pytest.mark.parametrize("b_solver", ["fixed_point_iter", "anderson", "broyden"])
def test_ift_matches_exact_implicit_gradient(flags, core, b_solver):
    f, params, c = make_problem()
    expected = exact_implicit_grads(f, params, c)
    deq = get_deq(
        core=core,
        **flags,
        f_max_iter=300,
        f_tol=1e-13,
        b_solver=b_solver,
        b_max_iter=300,
        b_tol=1e-13,
        f_solver="anderson",
    )
    (z_star,), _ = deq(f, torch.zeros(B, D))
    got = torch.autograd.grad((c * z_star).sum(), params)
    for g, e in zip(got, expected):
        assert ((g - e).norm() / e.norm()).item() < 1e-6


@pytest.mark.parametrize("flags", IFT_FLAGS, ids=IFT_IDS)
def test_ift_matches_finite_differences(flags):
    f, (W, U, x), c = make_problem()
    deq = get_deq(**flags, f_max_iter=400, f_tol=1e-14, b_max_iter=400, b_tol=1e-14)
    (z_star,), _ = deq(f, torch.zeros(B, D))
    (gW,) = torch.autograd.grad((c * z_star).sum(), [W])
    deq.eval()
    E = torch.zeros(D, D)
    E[1, 2] = 1e-6
    with torch.no_grad():
        W += E
        zp = deq(f, torch.zeros(B, D))[0][0]
        W -= 2 * E
        zm = deq(f, torch.zeros(B, D))[0][0]
        W += E
    fd = ((c * zp).sum() - (c * zm).sum()) / 2e-6
    assert abs(fd - gW[1, 2]) < 1e-6 * max(1.0, abs(fd))


@pytest.mark.parametrize("k, tau", [(1, 1.0), (3, 0.7), (5, 0.5)])
def test_phantom_grad_equals_backprop_through_damped_unrolled_steps(k, tau):
    f, params, c = make_problem()
    deq = get_deq(core="indexing", grad=k, tau=tau, f_max_iter=50, f_tol=0.0)
    (z_out,), _ = deq(f, torch.zeros(B, D))
    got = torch.autograd.grad((c * z_out).sum(), params)
    with torch.no_grad():
        z = torch.zeros(B, D)
        for _ in range(50):
            z = f(z)
    z0 = z.detach()
    z = z0
    for _ in range(k):
        z = tau * f(z) + (1 - tau) * z
    torch.testing.assert_close(z_out, z)
    expected = torch.autograd.grad((c * z).sum(), params)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e)


@pytest.mark.parametrize("k, tau", [(1, 1.0), (3, 0.7)])
def test_phantom_grad_matches_finite_differences_of_the_unrolled_map(k, tau):
    f, (W, U, x), c = make_problem()
    z_pred = torch.randn(B, D)  # any detached estimate: phantom grads unroll k steps from it
    grad_fn = backward_factory(k, tau=tau)
    (gW,) = torch.autograd.grad((c * grad_fn(None, f, z_pred)[-1]).sum(), [W])

    def unrolled():
        z = z_pred
        for _ in range(k):
            z = tau * f(z) + (1 - tau) * z
        return (c * z).sum()

    E = torch.zeros(D, D)
    E[2, 0] = 1e-6
    with torch.no_grad():
        W += E
        lp = unrolled()
        W -= 2 * E
        lm = unrolled()
        W += E
    fd = (lp - lm) / 2e-6
    assert abs(fd - gW[2, 0]) < 1e-7 * max(1.0, abs(fd))


def test_backward_factory_takes_a_solver_function_or_a_name(monkeypatch):
    from torchdeq.solver import _SOLVERS, anderson_solver, get_solver

    f, params, c = make_problem()
    z_star = torch.zeros(B, D)
    with torch.no_grad():
        for _ in range(300):
            z_star = f(z_star)
    opts = dict(max_iter=200, tol=1e-12)
    grads = []
    calls = []

    def own_solver(func, x0, **kwargs):
        calls.append(1)
        return anderson_solver(func, x0, **kwargs)

    monkeypatch.setitem(_SOLVERS, "own_test_solver", own_solver)  # registered for this test
    solvers = ["anderson", anderson_solver, get_solver("anderson"), own_solver, "own_test_solver"]
    for b_solver in solvers:
        grad_fn = backward_factory("ift", b_solver=b_solver, b_solver_kwargs=opts)
        (z,) = grad_fn(None, f, z_star)
        grads.append(torch.autograd.grad((c * z).sum(), params))
    assert len(calls) == 2
    for got in grads[1:]:
        for g, e in zip(got, grads[0]):
            torch.testing.assert_close(g, e)
    with pytest.raises(OptionError, match="solver function"):
        backward_factory("ift", b_solver=3)


def test_backward_writer_receives_backward_solver_stats():
    f, params, c = make_problem()
    seen = []
    deq = get_deq(ift=True, b_max_iter=50, b_tol=1e-10)
    (z,), _ = deq(f, torch.zeros(B, D), backward_writer=seen.append)
    (c * z).sum().backward()
    assert len(seen) == 1 and seen[0]["abs_lowest"].shape == (B,)
    assert seen[0]["abs_lowest"].max() < 1e-8


def test_ift_supports_two_backward_passes_with_autograd_function():
    f, (W, U, x), c = make_problem()
    (z,), _ = get_deq(ift=True)(f, torch.zeros(B, D))
    loss = (c * z).sum()
    (g1,) = torch.autograd.grad(loss, [W], retain_graph=True)
    (g2,) = torch.autograd.grad(loss, [W])
    torch.testing.assert_close(g1, g2)


def test_backward_factory_validates_options():
    with pytest.raises(OptionError, match="b_solverr"):
        backward_factory("ift", b_solverr="anderson")
    with pytest.raises(OptionError, match="grad_type"):
        backward_factory(0)
    with pytest.raises(OptionError, match="sup_loc"):
        backward_factory(3, sup_loc=[4])
    with pytest.raises(OptionError, match="'m'"):
        backward_factory("ift", b_solver="broyden", b_solver_kwargs={"m": 3})
    with pytest.raises(AssertionError, match="broyden"):
        backward_factory("ift", b_solver="broydn")


def test_backward_factory_phantom_sup_loc_selects_steps():
    f, params, c = make_problem()
    states = backward_factory(4, sup_loc=[1, 3])(None, f, torch.zeros(B, D))
    assert len(states) == 3  # steps 1, 3 and the last one
    z = torch.zeros(B, D)
    expected = []
    for step in range(1, 5):
        z = f(z)
        if step in (1, 3, 4):
            expected.append(z)
    for s, e in zip(states, expected):
        torch.testing.assert_close(s, e)
