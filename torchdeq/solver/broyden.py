"""Broyden's method: quasi-Newton root finding on ``g(z) = f(z) - z``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor

from torchdeq.solver import small
from torchdeq.solver.loop import FlatMap, UpdateRule, solve
from torchdeq.solver.options import strict_options
from torchdeq.solver.stat import SolverStat
from torchdeq.utils.checks import check_int

# Armijo constant and the most halvings of the step a line search tries
_ARMIJO_C = 1e-4
_MAX_HALVINGS = 5


class GoodBroyden(UpdateRule):
    """Limited-memory "good" Broyden updates of the inverse Jacobian of ``g = f(z) - z``.

    The inverse Jacobian estimate is ``M = -I + sum_i u_i v_i^T`` (at most ``memory`` pairs,
    the oldest dropped first); ``M`` starts at ``-I``, so the first step is ``z + g``, a
    fixed-point step. After a step ``dz`` changed ``g`` by ``dg``, the good Broyden update in
    Sherman-Morrison form adds ``u = (dz - M dg) / (v^T dg)`` with ``v = M^T dz``, and the next
    step is ``-M g``.

    Every vector involved is a combination of the residuals ``g_0 ... g_t`` seen so far, so
    the rule stores only those residuals (rows of ``G``), their Gram matrix ``R = G G^T`` and
    the coefficients of ``u_i``, ``v_i`` and the last step over them. A step then costs one
    pass over ``G`` for the new Gram row and one to form the new step, instead of four passes
    over explicit ``u`` and ``v`` histories; everything else is ``(t x t)`` algebra (on the
    host for CPU tensors, see :mod:`torchdeq.solver.small`).

    Args:
        memory (int | None): Number of stored update pairs; None keeps all.
        line_search (bool): Backtrack the step (halving it) until ``||g||^2`` decreases
            enough (Armijo); trial evaluations of ``f`` beyond the first are extra calls.
    """

    def __init__(self, memory: int | None, line_search: bool):
        self.memory = memory
        self.line_search = line_search

    def start(self, fn: FlatMap, z0: Tensor, max_iter: int) -> None:
        batch, dim = z0.shape
        pairs = max_iter if self.memory is None else min(self.memory, max_iter)
        like = {"dtype": z0.dtype, "device": z0.device}
        self.fn = fn
        self.pairs = pairs
        # residuals g_t; a step reads only the rows written so far
        self.basis = self.borrow((batch, max_iter, dim), z0)
        # the (t x t) state, as arrays for the small algebra (see torchdeq.solver.small)
        self.gram = small.host(torch.zeros(batch, max_iter, max_iter, **like))
        self.u = small.host(torch.zeros(batch, pairs, max_iter, **like))  # coefficients of u_i
        self.v = small.host(torch.zeros(batch, pairs, max_iter, **like))  # coefficients of v_i
        self.step_coef = small.host(torch.zeros(batch, max_iter, **like))  # last step, unscaled
        self.scale = torch.ones(batch, 1, **like)  # its line-search factor
        self.neg_eye = small.host(-torch.eye(max_iter, **like))  # row t: coefficients of -g_t
        self.eps_sq = torch.finfo(z0.dtype).eps ** 2
        self.count = 0  # update pairs written so far

    def residual(self, k: int, z: Tensor, fz: Tensor) -> tuple[Tensor, Tensor]:
        t = k - 1
        g = torch.sub(fz, z, out=self.basis[:, t])
        row = torch.bmm(g[:, None, :], self.basis[:, : t + 1].mT)[:, 0]
        self.gram[:, t, : t + 1] = self.gram[:, : t + 1, t] = small.host(row)
        return g, row[:, t]

    def step(self, k: int, z: Tensor, fz: Tensor, g: Tensor) -> tuple[Tensor, Tensor | None]:
        t = k - 1
        if t == 0:
            # M = -I: the first step is the fixed-point step
            self.step_coef[:, 0] = 1.0
            if not self.line_search:
                return z + g, None
            direction = g
        else:
            with small.quiet():
                coef = small.as_tensor(self._update(t))[:, None, :]
            if not self.line_search:
                # z + sum_i coef_i g_i in one pass over the basis
                return torch.baddbmm(z[:, None, :], coef, self.basis[:, :k])[:, 0], None
            direction = torch.bmm(coef, self.basis[:, :k])[:, 0]
        return self._search(z, g, direction)

    def _update(self, t: int) -> Any:
        """The coefficients over ``g_0 ... g_t`` of the next step ``-M g_t`` (written to
        ``step_coef`` too), by ``(t x t)`` algebra on the Gram matrix ``R``."""
        n, slot, size = min(self.count, self.pairs), self.count % self.pairs, t + 1
        gram = self.gram[:, :size, :size]
        r = gram[:, t]  # R e_t: inner products of g_t with the basis
        u, v = self.u[:, :n, :size], self.v[:, :n, :size]
        prev = self.step_coef[:, :size]  # the last step before scaling, -M g_{t-1}
        dz = prev * small.host(self.scale) if self.line_search else prev
        v_g = v @ r[:, :, None]  # (B, n, 1): v_i . g
        m_g = (v_g.mT @ u)[:, 0] + self.neg_eye[t, :size]  # M g = -g + sum_i u_i (v_i . g)
        # v = M^T dz = -dz + sum_i v_i (u_i . dz)
        mt_dz = ((u @ (gram @ dz[:, :, None])).mT @ v)[:, 0] - dz
        r_v = (gram @ mt_dz[:, :, None])[:, :, 0]
        v_g_new = r_v[:, t]  # v . g_t
        denom = v_g_new - r_v[:, t - 1]  # v^T dg, with dg = g_t - g_{t-1}
        # skip the update where v^T dg vanishes relative to |v| |dg|
        v_sq = (mt_dz * r_v).sum(axis=1)
        dg_sq = gram[:, t, t] + gram[:, t - 1, t - 1] - 2 * gram[:, t, t - 1]
        usable = denom * denom > v_sq * dg_sq * self.eps_sq
        inv = small.where(usable, 1 / small.where(usable, denom, 1.0), 0.0)
        # u = (dz - M dg) / (v^T dg) with M dg = M g - M g_{t-1} = M g + prev; the next step is
        # -M' g with M' = M + u v^T (minus the pair u replaces): -(M g + u (v . g))
        if self.line_search:
            u_new = (dz - prev - m_g) * inv[:, None]
            coef = -(m_g + u_new * v_g_new[:, None])
        else:
            # dz = prev, so u = -M g / (v^T dg) and the step is M g (v . g / v^T dg - 1)
            u_new = m_g * -inv[:, None]
            coef = m_g * (inv * v_g_new - 1)[:, None]
        if self.count >= self.pairs:
            coef += self.u[:, slot, :size] * v_g[:, slot]
        self.u[:, slot, :size] = u_new
        self.v[:, slot, :size] = mt_dz
        prev[...] = coef
        self.count += 1
        return coef

    def _search(self, z: Tensor, g: Tensor, direction: Tensor) -> tuple[Tensor, Tensor]:
        """Armijo backtracking per sample on ``||g||^2``; returns ``z_k`` and ``f(z_k)``."""
        phi0 = torch.linalg.vecdot(g, g)
        size = torch.ones_like(phi0)
        done = torch.zeros_like(phi0, dtype=torch.bool)
        z_new = f_new = None
        for trial in range(_MAX_HALVINGS + 1):
            z_try = torch.addcmul(z, size[:, None], direction)
            f_try = self.fn(z_try)
            g_try = f_try - z_try
            ok = torch.linalg.vecdot(g_try, g_try) <= (1 - 2 * _ARMIJO_C * size) * phi0
            if trial == _MAX_HALVINGS:
                ok = torch.ones_like(ok)
            take = ok & ~done
            z_new = z_try if z_new is None else torch.where(take[:, None], z_try, z_new)
            f_new = f_try if f_new is None else torch.where(take[:, None], f_try, f_new)
            self.scale = torch.where(take[:, None], size[:, None], self.scale)
            done |= ok
            # the search needs the acceptance on the host; it is opt-in
            if bool(done.all()):
                break
            size = torch.where(done, size, size * 0.5)
        return z_new, f_new


@strict_options
def broyden_solver(
    func: Callable[[Tensor], Tensor],
    x0: Tensor,
    max_iter: int = 50,
    tol: float = 1e-3,
    stop_mode: Literal["abs", "rel"] = "abs",
    indexing: list[int] | None = None,
    LBFGS_thres: int | None = None,  # noqa: N803 (the spec's name)
    ls: bool = False,
    return_final: bool = False,
    **kwargs: Any,
) -> tuple[Tensor, list[Tensor], SolverStat]:
    """Implements the Broyden's method for solving a system of nonlinear equations.

    Finds a root of ``g(z) = f(z) - z`` with limited-memory "good" Broyden updates of the
    inverse Jacobian, starting from ``-I`` (so the first step is a fixed-point step). The
    update pairs are kept as coefficients over the residuals seen so far, so each step costs
    one call of ``func`` and two passes over those residuals. They take ``B x max_iter x D``
    memory whatever ``LBFGS_thres`` is (explicit ``u`` and ``v`` histories holding every pair
    would take twice that), plus ``(max_iter x max_iter)`` matrices per sample.

    Args:
        func (callable): The function for which we seek a fixed point.
        x0 (torch.Tensor): The initial guess ``(B, ...)``; a 0-d tensor is one sample and a
            ``(B,)`` tensor B scalar samples.
        max_iter (int, optional): The maximum number of iterations (calls of ``func``, plus
            the extra trials of a line search). Default: 50.
        tol (float, optional): The convergence criterion: a sample is finished when its lowest
            residual is below ``tol``; ``tol <= 0`` runs every step. Default: 1e-3.
        stop_mode (str, optional): The stopping criterion, ``'abs'`` or ``'rel'``.
            Default: ``'abs'``.
        indexing (list, optional): Steps (1-based) whose iterates to return. Default: None.
        LBFGS_thres (int, optional): Number of stored update pairs (the oldest is dropped
            first). None for storing all. Default: None.
        ls (bool, optional): If True, backtrack each step (Armijo rule on ``||g||^2``, halving
            up to 5 times); this reads one flag on the host per trial. Default: False.
        return_final (bool, optional): If True, run all steps and return the final iterate
            instead of the one with the smallest residual. Default: False.
        **kwargs: Extra arguments are ignored, with an OptionWarning naming them (an
            OptionError in strict mode, see :func:`~torchdeq.utils.checks.strict`).

    Returns:
        tuple[torch.Tensor, list[torch.Tensor], SolverStat]: The fixed point estimate, the
        iterates at the ``indexing`` steps, and the solver statistics (see
        :class:`~torchdeq.solver.stat.SolverStat`).

    Raises:
        OptionError: For an invalid value (or, in strict mode, an unknown option).
        ValueError: If ``func`` changes the shape of its input.

    Example:
        >>> f = lambda z: 0.5 * (z + 2 / z)
        >>> z_star, _, _ = broyden_solver(f, torch.tensor(1.0), tol=1e-6)
        >>> bool((z_star - 2**0.5).abs() < 1e-5)
        True

    References:
        Broyden, C. G. "A Class of Methods for Solving Nonlinear Simultaneous Equations."
        Mathematics of Computation, 1965.
        Bai, S., Kolter, J. Z. and Koltun, V. "Deep Equilibrium Models." NeurIPS 2019,
        arXiv:1909.01377.
    """
    if LBFGS_thres is not None:
        LBFGS_thres = check_int("broyden_solver", "LBFGS_thres", LBFGS_thres, 1)  # noqa: N806
    return solve(
        func,
        x0,
        GoodBroyden(LBFGS_thres, bool(ls)),
        where="broyden_solver",
        max_iter=max_iter,
        tol=tol,
        stop_mode=stop_mode,
        indexing=indexing,
        return_final=return_final,
    )
