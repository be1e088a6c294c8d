"""Safeguarded Anderson: rejected growing steps, restarts, and no stall where iteration converges."""

from __future__ import annotations

import pytest
import torch
from problems import DTYPE, PROBLEMS

from torchdeq.solver import anderson_solver, fixed_point_iter, small
from torchdeq.utils.checks import OptionError

TOL = 1e-8


def linear(a: torch.Tensor, b: torch.Tensor):
    return lambda z: (a @ z[..., None])[..., 0] + b


def chain(length: int, gain: float, batch: int = 2, width: int = 4):
    """``z_i = gain z_{i-1} + b_i``: nilpotent, so iteration is exact after ``length`` steps."""
    b = torch.randn(batch, length, width, generator=torch.Generator().manual_seed(0), dtype=DTYPE)

    def f(z):
        z = z.view(batch, length, width)
        shifted = torch.cat([torch.zeros_like(z[:, :1]), z[:, :-1]], dim=1)
        return (gain * shifted + b).view(batch, -1)

    return f, torch.zeros(batch, length * width, dtype=DTYPE)


def jordan(eig: float, coupling: float, b: torch.Tensor):
    """``eig I + coupling N`` (N the shift): one Jordan block, strongly non-normal."""
    n = b.shape[-1]
    shift = torch.diag(torch.ones(n - 1, dtype=DTYPE), 1)
    return linear(eig * torch.eye(n, dtype=DTYPE) + coupling * shift, b)


def hard_bank(n: int = 16):
    """Badly scaled and non-normal maps on which plain iteration converges."""
    gen = torch.Generator().manual_seed(0)
    q = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=DTYPE))[0]
    sym = q @ torch.diag(torch.linspace(-1, 1, n, dtype=DTYPE)) @ q.T
    s = torch.logspace(-3, 3, n, dtype=DTYPE)
    upper = torch.triu(torch.randn(n, n, generator=gen, dtype=DTYPE), 1)
    schur = q @ (upper + torch.diag(0.8 * torch.rand(n, generator=gen, dtype=DTYPE))) @ q.T
    b = torch.randn(3, n, generator=gen, dtype=DTYPE)
    w = 0.95 * q
    return {
        # a contraction seen through a diagonal change of variables spanning 1e6
        "scaled": linear(s[:, None] * 0.9 * sym / s[None, :], b),
        # samples whose solutions differ in scale by 1e12
        "sample_scale": linear(0.7 * sym, b * torch.tensor([[1e-6], [1.0], [1e6]], dtype=DTYPE)),
        # oscillating: eigenvalues near -0.95
        "negative": linear(-0.95 * torch.eye(n, dtype=DTYPE) + 0.02 * q, b),
        # nonlinear and badly scaled
        "tanh_scaled": lambda z: s * torch.tanh((w @ (z / s)[..., None])[..., 0] + 0.3),
        # non-normal: residuals grow on the way to the fixed point under any method
        "schur": linear(schur, b),
        "jordan_0.9": jordan(0.9, 1.0, b),
        "jordan_0.8": jordan(0.8, 2.0, b),
        "jordan_0.5": jordan(0.5, 3.0, b),
        "jordan_-0.7": jordan(-0.7, 0.5, b),
        "jordan_0.95": jordan(0.95, 0.5, b),
    }


def steps_to_tol(solver, f, z0, **opts) -> tuple[int, float]:
    _, _, info = solver(f, z0, max_iter=3000, tol=TOL, stop_mode="rel", **opts)
    return int(info["nstep"].max()), float(info["rel_lowest"].max())


@pytest.mark.parametrize("name", list(hard_bank()))
def test_safeguarded_anderson_never_needs_more_steps_than_iteration(name):
    f = hard_bank()[name]
    z0 = torch.zeros(3, 16, dtype=DTYPE)
    fp_steps, fp_res = steps_to_tol(fixed_point_iter, f, z0)
    steps, res = steps_to_tol(anderson_solver, f, z0, safeguard=True)
    assert fp_res < TOL and res < TOL
    assert steps <= fp_steps


def test_safeguard_helps_where_anderson_struggles():
    # unguarded Anderson needs more steps than iteration on these (or stalls)
    z0 = torch.zeros(3, 16, dtype=DTYPE)
    for name in ("schur", "jordan_0.9", "jordan_0.95"):
        f = hard_bank()[name]
        guarded, _ = steps_to_tol(anderson_solver, f, z0, safeguard=True)
        unguarded, _ = steps_to_tol(anderson_solver, f, z0)
        assert guarded <= 0.6 * unguarded, name


@pytest.mark.parametrize("m", [6, 25])
def test_safeguard_turns_a_stall_on_the_gain_3_chain_into_iteration_speed(m):
    # the chain is nilpotent: iteration is exact after 20 steps, while its residual grows 3x
    # per step until then; the guard keeps iterating plainly through that growth
    f, z0 = chain(20, 3.0)
    fp_steps, _ = steps_to_tol(fixed_point_iter, f, z0)
    steps, res = steps_to_tol(anderson_solver, f, z0, m=m, safeguard=True)
    assert res < TOL and steps <= fp_steps == 20
    _, _, stalled = anderson_solver(f, z0, max_iter=200, tol=TOL, stop_mode="rel", m=m)
    assert stalled["nstep"].max() > 5 * fp_steps  # unguarded: stalls (m=25) or crawls (m=6)


def test_a_mixed_step_may_grow_the_residual_tenfold():
    # Anderson's residuals are not monotone on a badly scaled map; the guard tolerates that,
    # so it costs no steps there (rejecting every growth costs 4x the steps)
    f = hard_bank()["scaled"]
    z0 = torch.zeros(3, 16, dtype=DTYPE)
    assert steps_to_tol(anderson_solver, f, z0, safeguard=True)[0] <= steps_to_tol(
        anderson_solver, f, z0
    )[0]


def test_a_rejected_step_is_the_plain_damped_step():
    # f(z) = 3 z + 1 grows every mixed step: the guard must fall back to iteration
    f = lambda z: -3.0 * z + 1.0  # noqa: E731
    z0 = torch.tensor([0.1, 2.0], dtype=DTYPE)
    _, states, _ = anderson_solver(
        f, z0, max_iter=4, tol=0.0, m=3, tau=0.25, safeguard=True, indexing=[1, 2, 3, 4]
    )
    _, plain, _ = fixed_point_iter(f, z0, max_iter=1, tol=0.0, tau=0.25, indexing=[1])
    torch.testing.assert_close(states[0], plain[0])
    # on this scalar linear map Anderson with two residuals is exact (a secant step)
    torch.testing.assert_close(states[1], torch.full_like(z0, 0.25), atol=1e-12, rtol=0)


@pytest.mark.parametrize("problem", PROBLEMS, ids=lambda p: p.name)
def test_safeguarded_anderson_solves_the_bank(problem):
    z_star, _, info = anderson_solver(
        problem.func, problem.x0, max_iter=problem.max_iter, tol=1e-10, safeguard=True
    )
    torch.testing.assert_close(z_star, problem.solution, atol=1e-8, rtol=1e-8)


def test_safeguard_host_and_tensor_algebra_agree(monkeypatch):
    f, z0 = chain(10, 3.0)
    host = anderson_solver(f, z0, max_iter=40, tol=0.0, m=5, safeguard=True, indexing=[7, 40])
    monkeypatch.setattr(small, "np", None)  # the accelerator code path, on the CPU
    device = anderson_solver(f, z0, max_iter=40, tol=0.0, m=5, safeguard=True, indexing=[7, 40])
    for a, b in zip(host[1], device[1], strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


def test_safeguard_options_are_checked():
    with pytest.raises(OptionError, match="safeguard"):
        anderson_solver(torch.cos, torch.zeros(2), safeguard="yes")
    with pytest.raises(OptionError, match="max_weight"):
        anderson_solver(torch.cos, torch.zeros(2), safeguard=True, max_weight=0.5)
