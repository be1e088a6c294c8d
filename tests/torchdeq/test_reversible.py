"""Reversible DEQ core: exact gradients of the unrolled iteration, constant saved memory."""

from __future__ import annotations

import pytest
import torch
from problems import DTYPE

from torchdeq import get_deq
from torchdeq.reversible import _Run
from torchdeq.utils.checks import OptionError


def unrolled(f, z0, beta: float, steps: int):
    """The reversible iteration with autograd on (stores every step)."""
    y = z = z0
    for _ in range(steps):
        y = (1 - beta) * y + beta * f(z)
        z = (1 - beta) * z + beta * f(y)
    return z


def model(seed: int = 0, dim: int = 6):
    torch.manual_seed(seed)
    stem = torch.nn.Linear(4, dim).double()
    lin = torch.nn.Linear(dim, dim).double()
    return stem, lin, torch.randn(3, 4, dtype=DTYPE)


def grads(loss, params):
    return torch.autograd.grad(loss, params)


@pytest.mark.parametrize("beta", [0.5, 0.8, 1.3])
def test_reversible_gradient_equals_backprop_through_the_unrolled_iteration(beta):
    stem, lin, inp = model()
    params = [*stem.parameters(), *lin.parameters()]
    w = torch.linspace(-1, 1, 18, dtype=DTYPE).view(3, 6)

    def run(deq_or_none):
        x = stem(inp)  # an injection with its own graph, closed over by f

        def f(z):
            return torch.tanh(lin(z) + x)

        z0 = torch.zeros(3, 6, dtype=DTYPE)
        if deq_or_none is None:
            return unrolled(f, z0, beta, 7)
        return deq_or_none(f, z0)[0][-1]

    deq = get_deq(core="reversible", beta=beta, f_max_iter=7, f_tol=0.0)
    got = grads((w * run(deq)).sum(), params)
    expected = grads((w * run(None)).sum(), params)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)


def test_reversible_gradient_with_tuple_states_and_early_stopping():
    stem, lin, inp = model(1)
    params = [*stem.parameters(), *lin.parameters()]
    x = stem(inp)

    def cell(a, b):
        return torch.tanh(0.3 * lin(b) + x), 0.5 * torch.tanh(a)

    z0 = (torch.zeros(3, 6, dtype=DTYPE), torch.zeros(3, 6, dtype=DTYPE))
    deq = get_deq(core="reversible", beta=0.5, f_max_iter=40, f_tol=1e-4)
    ((a, b),), info = deq(cell, z0)
    steps = int(info["nstep"][0])
    assert 0 < steps < 40  # stopped early: the gradient is that of the steps taken
    got = grads(a.sum() + 2 * b.sum(), params)
    x = stem(inp)  # a fresh graph for the reference

    def packed(z):
        za, zb = cell(z[:, :6], z[:, 6:])
        return torch.cat([za, zb], dim=1)

    z = unrolled(packed, torch.zeros(3, 12, dtype=DTYPE), 0.5, steps)
    expected = grads(z[:, :6].sum() + 2 * z[:, 6:].sum(), params)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, atol=1e-10, rtol=1e-8)


def saved_bytes(steps: int) -> int:
    stem, lin, inp = model()
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    x = stem(inp).detach().requires_grad_()
    deq = get_deq(core="reversible", f_max_iter=steps, f_tol=0.0)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        z = deq(lambda z: torch.tanh(lin(z) + x), torch.zeros(3, 6, dtype=DTYPE))[0][-1]
    z.sum().backward()
    return total[0]


def test_reversible_saved_memory_does_not_grow_with_the_steps():
    assert saved_bytes(3) == saved_bytes(30) > 0


def test_reconstruction_recovers_the_initial_state():
    _, lin, _ = model()
    z0 = torch.randn(3, 6, dtype=DTYPE)
    run = _Run(lambda z: torch.tanh(lin(z)), 0.5)
    y, z, steps, _, _ = run.forward(z0, 10, 0.0, False, collect=False)
    _, (y0, z0_back) = run.backward(y, z, steps, torch.zeros_like(z), [])
    torch.testing.assert_close(z0_back, z0, atol=1e-10, rtol=0)
    torch.testing.assert_close(y0, z0, atol=1e-10, rtol=0)


def test_reversible_eval_runs_the_same_iteration():
    _, lin, _ = model()
    f = lambda z: torch.tanh(lin(z))  # noqa: E731
    deq = get_deq(core="reversible", beta=0.5, f_max_iter=5, eval_factor=2.0, f_tol=0.0).eval()
    (z,), info = deq(f, torch.zeros(2, 6, dtype=DTYPE), sradius_mode=True)
    with torch.no_grad():
        torch.testing.assert_close(z, unrolled(f, torch.zeros(2, 6, dtype=DTYPE), 0.5, 10))
    assert info["nstep"].tolist() == [10.0, 10.0] and info["sradius"].shape == (2,)
    assert info["abs_trace"].shape == (2, 10)


@pytest.mark.parametrize("training", [True, False])
def test_reversible_info_holds_every_stat_key(training):
    from torchdeq.solver.stat import STAT_KEYS

    # z = c z + 1: the residual shrinks like c^n, so only the c = 0.1 sample meets the tolerance
    c = torch.tensor([[0.1], [0.9]], dtype=DTYPE)
    deq = get_deq(core="reversible", beta=0.5, f_max_iter=8, f_tol=0.05).train(training)
    _, info = deq(lambda z: c * z + 1.0, torch.zeros(2, 3, dtype=DTYPE))
    assert set(STAT_KEYS) <= set(info), set(STAT_KEYS) - set(info)
    assert info["converged"].dtype == torch.bool
    assert info["converged"].tolist() == (info["abs_lowest"] <= 0.05).tolist() == [True, False]


@pytest.mark.parametrize(
    "options,match",
    [({"beta": 1.0}, "beta=1.0"), ({"beta": 2.5}, "beta"),
     ({"f_solver": "anderson"}, "f_solver='anderson'"), ({"ift": True}, "ift=True"),
     ({"n_states": 2}, "n_states"), ({"f_solver_kwargs": {"tau": 0.5}}, "f_solver_kwargs")],
)  # fmt: skip
def test_reversible_rejects_options_that_would_do_nothing(options, match):
    with pytest.raises(OptionError, match=match):
        get_deq(core="reversible", **options)


def test_reversible_rejects_per_call_solver_options():
    deq = get_deq(core="reversible")
    with pytest.raises(OptionError, match="tau"):
        deq(torch.cos, torch.zeros(2, 3), solver_kwargs={"tau": 0.5})



def test_reversible_gradient_reaches_normalised_weights():
    from torchdeq import apply_norm, reset_norm

    torch.manual_seed(2)
    lin = torch.nn.Linear(6, 6).double()
    apply_norm(lin, "weight_norm")
    params = list(lin.parameters())
    x = torch.randn(3, 6, dtype=DTYPE)
    f = lambda z: torch.tanh(lin(z) + x)  # noqa: E731
    reset_norm(lin)
    z = get_deq(core="reversible", f_max_iter=4, f_tol=0.0)(f, torch.zeros(3, 6, dtype=DTYPE))
    got = grads(z[0][-1].sum(), params)
    reset_norm(lin)
    expected = grads(unrolled(f, torch.zeros(3, 6, dtype=DTYPE), 0.5, 4).sum(), params)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)
