"""Krylov solvers for affine fixed points ``y = h(y)``: the linear system of the IFT backward pass.

Implicit differentiation solves ``y = J_f(z*)^T y + dL/dz*``, a fixed point of an *affine* map
``h``, i.e. the linear system ``(I - J^T) y = dL/dz*``. Fixed-point iteration converges at the
rate of ``J``'s spectral radius, which is close to 1 in the models that matter, and Anderson
and Broyden are nonlinear methods; Krylov methods are made for this system. Both solvers here
see the system only through ``h``: with a reference point ``x_r`` and ``h_r = h(x_r)``, the
operator is ``A u = u - (h(x_r + u) - h_r)`` (one call of ``h``, one vector-Jacobian product in
the backward pass, and no dense Jacobian), and the residual of ``y`` is ``h(y) - y``.

They are update rules of the shared loop (:mod:`torchdeq.solver.loop`), so ``tol``,
``stop_mode``, ``indexing``, ``return_final``, ``nstep`` and the statistics mean what they mean
for every solver, a sample that meets ``tol`` keeps its iterate, and each loop step is exactly
one call of ``h``: the rules hand the loop ``h`` at their new iterate, which for an affine map
is ``y + r`` with the residual ``r`` they already hold. Every sample has its own Krylov space;
the per-sample algebra is batched.

They solve affine problems only; as a DEQ's forward solver they are refused
(``backward_only``), since on a nonlinear ``f`` the operator above is not ``I - J``.

References:
    Saad, Y. and Schultz, M. H. "GMRES: A Generalized Minimal Residual Algorithm for Solving
    Nonsymmetric Linear Systems." SIAM J. Sci. Stat. Comput., 1986.
    van der Vorst, H. A. "Bi-CGSTAB: A Fast and Smoothly Converging Variant of Bi-CG for the
    Solution of Nonsymmetric Linear Systems." SIAM J. Sci. Stat. Comput., 1992.
    Giraud, L., Langou, J. and Rozloznik, M. "The loss of orthogonality in the Gram-Schmidt
    orthogonalization process." Computers & Mathematics with Applications, 2005 (CGS2).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor

from torchdeq.solver.loop import FlatMap, UpdateRule, solve
from torchdeq.solver.options import strict_options
from torchdeq.solver.stat import SolverStat
from torchdeq.utils.checks import check_int


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` with 0 where ``den`` is 0 (a converged or broken-down sample stops)."""
    zero = den == 0
    return torch.where(zero, torch.zeros_like(num), num / torch.where(zero, 1.0, den))


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample inner products of ``(B, D)`` rows."""
    return torch.linalg.vecdot(a, b)


class _AffineOperator:
    """``A u = u - (h(x_r + u) - h(x_r))`` for the affine map behind ``fn``."""

    def __init__(self, fn: FlatMap):
        self.fn = fn
        self.calls = 0

    def reset(self, x_ref: Tensor, h_ref: Tensor) -> None:
        self.x_ref, self.h_ref = x_ref, h_ref

    def __call__(self, u: Tensor) -> Tensor:
        self.calls += 1
        return u - (self.fn(self.x_ref + u) - self.h_ref)


class GMRESRule(UpdateRule):
    """Restarted GMRES: the iterate that minimises ``||r||`` over the current Krylov space.

    A cycle starts from the current iterate ``x_0`` (its ``h(x_0)`` is what the loop hands in,
    so a restart costs no extra call), with ``v_1 = r_0 / ||r_0||``. Step ``j`` of the cycle
    calls ``h`` once for ``A v_j`` and orthogonalises it against ``v_1 .. v_j`` by classical
    Gram-Schmidt applied twice (four batched products, as stable as modified Gram-Schmidt). The
    small least-squares problem ``min ||beta e_1 - H c||`` is kept solved by a QR factorisation
    of ``H`` updated with one Givens rotation per step (``Q^T`` is held explicitly, so applying
    the earlier rotations to the new column is one batched product), which leaves a triangular
    solve per step. The iterate is ``x_0 + V c`` and ``h`` there is the iterate plus the
    residual ``V Q e_j (Q^T beta e_1)_j``.

    Args:
        restart (int | None): Krylov vectors per cycle (the memory is ``restart + 1`` vectors
            a sample); None never restarts.
    """

    def __init__(self, restart: int | None):
        self.restart = restart

    def start(self, fn: FlatMap, z0: Tensor, max_iter: int) -> None:
        super().start(fn, z0, max_iter)
        # the loop calls h once before the first step: max_iter - 1 Krylov vectors at most
        cycle = max_iter - 1 if self.restart is None else min(self.restart, max_iter - 1)
        self.size = max(1, cycle)
        self.op = _AffineOperator(fn)
        self.like = z0
        self._allocate(min(self.size, _FIRST_CAPACITY))
        self.j = 0

    def _allocate(self, capacity: int) -> None:
        """(Re)allocates the basis and the QR factors for ``capacity`` steps, keeping both."""
        batch, dim = self.like.shape
        like = {"dtype": self.like.dtype, "device": self.like.device}
        basis = torch.empty(batch, capacity + 1, dim, **like)
        qt = torch.eye(capacity + 1, **like).repeat(batch, 1, 1)
        r = torch.zeros(batch, capacity, capacity, **like)
        gv = torch.zeros(batch, capacity + 1, **like)
        if hasattr(self, "basis"):
            old = self.capacity
            basis[:, : old + 1] = self.basis
            qt[:, : old + 1, : old + 1] = self.qt
            r[:, :old, :old] = self.r
            gv[:, : old + 1] = self.gv
        self.basis, self.qt, self.r, self.gv, self.capacity = basis, qt, r, gv, capacity

    def step(self, k: int, z: Tensor, fz: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
        if self.j == self.capacity:  # an unrestarted solve grows its basis as it goes
            self._allocate(min(self.size, 2 * self.capacity))
        basis, qt, gv = self.basis, self.qt, self.gv
        if self.j == 0:
            self.op.reset(z, fz)
            self.x0 = z
            beta = torch.linalg.vector_norm(g, dim=1)
            torch.mul(g, _safe_div(torch.ones_like(beta), beta)[:, None], out=basis[:, 0])
            qt.copy_(torch.eye(qt.shape[-1], dtype=qt.dtype, device=qt.device))
            self.r.zero_()
            gv.zero_()
            gv[:, 0] = beta
        j = self.j = self.j + 1
        w = self.op(basis[:, j - 1])
        done = basis[:, :j]
        coef = torch.bmm(done, w[:, :, None])
        w = w - torch.bmm(done.mT, coef)[:, :, 0]
        again = torch.bmm(done, w[:, :, None])
        w = w - torch.bmm(done.mT, again)[:, :, 0]
        norm = torch.linalg.vector_norm(w, dim=1)
        # an exact breakdown (norm 0) means the residual is 0: the new vector is 0 too
        torch.mul(w, _safe_div(torch.ones_like(norm), norm)[:, None], out=basis[:, j])
        # the new Hessenberg column, through the earlier rotations (row j of Q^T is still e_j)
        col = torch.bmm(qt[:, :j, :j], (coef + again))[:, :, 0]
        a = col[:, j - 1]
        den = torch.sqrt(a * a + norm * norm)
        cos = torch.where(den == 0, torch.ones_like(den), a / torch.where(den == 0, 1.0, den))
        sin = _safe_div(norm, den)
        rows = qt[:, j - 1 : j + 1, : j + 1].clone()
        qt[:, j - 1, : j + 1] = cos[:, None] * rows[:, 0] + sin[:, None] * rows[:, 1]
        qt[:, j, : j + 1] = cos[:, None] * rows[:, 1] - sin[:, None] * rows[:, 0]
        g_top = gv[:, j - 1].clone()
        gv[:, j - 1] = cos * g_top
        gv[:, j] = -sin * g_top
        col[:, j - 1] = den
        self.r[:, :j, j - 1] = col
        r = self.r[:, :j, :j]
        # a zero pivot belongs to a sample whose residual is already 0: its weight is 0
        r_safe = r + torch.diag_embed((torch.diagonal(r, dim1=1, dim2=2) == 0).to(r.dtype))
        c = torch.linalg.solve_triangular(r_safe, gv[:, :j, None], upper=True)
        y = torch.baddbmm(self.x0[:, None], c.mT, done)[:, 0]
        # the residual beta e_1 - H c in the basis is Q e_j times (Q^T beta e_1)_j
        s = qt[:, j, : j + 1] * gv[:, j, None]
        hy = torch.baddbmm(y[:, None], s[:, None], basis[:, : j + 1])[:, 0]
        if j == self.size:
            self.j = 0  # the next step restarts from y, with h(y) = hy
        return y, hy


#: Krylov vectors allocated before a long cycle first grows its basis (then doubled as needed).
_FIRST_CAPACITY = 32


class BiCGStabRule(UpdateRule):
    """BiCGStab: two calls of ``h`` per iteration, each followed by a new iterate.

    The first half-step moves along ``p`` to ``x + alpha p`` (residual ``s``), the second
    minimises ``||s - omega A s||`` (residual ``r``); the loop measures both. Denominators that
    vanish (a converged sample, or a breakdown) give zero step lengths, so such a sample stops.
    """

    def start(self, fn: FlatMap, z0: Tensor, max_iter: int) -> None:
        super().start(fn, z0, max_iter)
        self.op = _AffineOperator(fn)
        self.first = True

    def step(self, k: int, z: Tensor, fz: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
        if self.first:
            self.first, self.half = False, 0
            self.op.reset(z, fz)
            self.x, self.r = z, g.clone()
            self.shadow = g.clone()
            ones = torch.ones(z.shape[0], dtype=z.dtype, device=z.device)
            self.rho, self.alpha, self.omega = ones, ones, ones
            self.p = self.v = torch.zeros_like(z)
        if self.half == 0:
            rho = _dot(self.shadow, self.r)
            beta = _safe_div(rho, self.rho) * _safe_div(self.alpha, self.omega)
            self.p = self.r + beta[:, None] * (self.p - self.omega[:, None] * self.v)
            self.v = self.op(self.p)
            self.alpha = _safe_div(rho, _dot(self.shadow, self.v))
            self.rho = rho
            self.h = self.x + self.alpha[:, None] * self.p
            self.s = self.r - self.alpha[:, None] * self.v
            self.half = 1
            return self.h, self.h + self.s
        t = self.op(self.s)
        self.omega = _safe_div(_dot(t, self.s), _dot(t, t))
        self.x = self.h + self.omega[:, None] * self.s
        self.r = self.s - self.omega[:, None] * t
        self.half = 0
        return self.x, self.x + self.r


def _backward_only(solver: Callable) -> Callable:
    solver.backward_only = True
    return solver


@_backward_only
@strict_options
def gmres_solver(
    func: Callable[[Tensor], Tensor],
    x0: Tensor,
    max_iter: int = 50,
    tol: float = 1e-3,
    stop_mode: Literal["abs", "rel"] = "abs",
    indexing: list[int] | None = None,
    restart: int | None = None,
    return_final: bool = False,
    **kwargs: Any,
) -> tuple[Tensor, list[Tensor], SolverStat]:
    """Restarted GMRES for the fixed point of an affine map (the IFT backward system).

    Each step is one call of ``func`` (one vector-Jacobian product in a backward pass); the
    residual ``||func(y) - y||`` never increases within a cycle of ``restart`` steps, and on a
    ``D``-dimensional problem an unrestarted solve is exact after ``D`` steps. Memory:
    ``restart + 1`` vectors per sample, or ``max_iter`` without restarts (the default, as
    Broyden keeps every step). Short cycles can stagnate where ``J`` has eigenvalues outside
    the unit circle: on a freshly initialised MDEQ cell (spectral radius 1.07) GMRES(20) and
    GMRES(60) stalled at relative residuals 0.14 and 0.02 while the unrestarted solve reached
    1e-6 in 194 steps (``scripts/bench_backward.py``).

    Args:
        func (callable): An affine map ``h(y) = M y + b`` (only through calls).
        x0 (torch.Tensor): Initial estimate ``(B, ...)``.
        max_iter (int, optional): Maximum number of calls of ``func``. Default: 50.
        tol (float, optional): Per-sample tolerance on the residual in ``stop_mode``.
            Default: 1e-3.
        stop_mode (str, optional): ``'abs'`` or ``'rel'``. Default: ``'abs'``.
        indexing (list, optional): Steps (1-based) whose iterates to return. Default: None.
        restart (int, optional): Krylov vectors per cycle; None never restarts. Default: None.
        return_final (bool, optional): Return the last iterate instead of the best one.
            Default: False.
        **kwargs: Unknown options are rejected.

    Returns:
        tuple[torch.Tensor, list[torch.Tensor], SolverStat]: The solution estimate, the
        iterates at ``indexing``, and the statistics.

    Raises:
        OptionError: For an unknown option or an invalid value.

    Example:
        >>> a = torch.tensor([[0.9, 0.5], [0.0, 0.9]])
        >>> y, _, info = gmres_solver(lambda y: y @ a.T + 1, torch.zeros(1, 2), tol=1e-10)
        >>> torch.allclose(y, torch.linalg.solve(torch.eye(2) - a, torch.ones(2)))
        True

    References:
        Saad and Schultz, SIAM J. Sci. Stat. Comput., 1986.
    """
    if restart is not None:
        restart = check_int("gmres_solver", "restart", restart, 1)
    return solve(
        func,
        x0,
        GMRESRule(restart),
        where="gmres_solver",
        max_iter=max_iter,
        tol=tol,
        stop_mode=stop_mode,
        indexing=indexing,
        return_final=return_final,
    )


@_backward_only
@strict_options
def bicgstab_solver(
    func: Callable[[Tensor], Tensor],
    x0: Tensor,
    max_iter: int = 50,
    tol: float = 1e-3,
    stop_mode: Literal["abs", "rel"] = "abs",
    indexing: list[int] | None = None,
    return_final: bool = False,
    **kwargs: Any,
) -> tuple[Tensor, list[Tensor], SolverStat]:
    """BiCGStab for the fixed point of an affine map (the IFT backward system).

    Two calls of ``func`` per iteration, each giving a new iterate (so ``max_iter`` counts
    calls, as for every solver), and memory for a few vectors whatever the number of steps.
    Residuals are not monotone; the loop returns each sample's best iterate.

    Args:
        func (callable): An affine map ``h(y) = M y + b`` (only through calls).
        x0 (torch.Tensor): Initial estimate ``(B, ...)``.
        max_iter (int, optional): Maximum number of calls of ``func``. Default: 50.
        tol (float, optional): Per-sample tolerance on the residual in ``stop_mode``.
            Default: 1e-3.
        stop_mode (str, optional): ``'abs'`` or ``'rel'``. Default: ``'abs'``.
        indexing (list, optional): Steps (1-based) whose iterates to return. Default: None.
        return_final (bool, optional): Return the last iterate instead of the best one.
            Default: False.
        **kwargs: Unknown options are rejected.

    Returns:
        tuple[torch.Tensor, list[torch.Tensor], SolverStat]: As :func:`gmres_solver`.

    Raises:
        OptionError: For an unknown option or an invalid value.

    Example:
        >>> a = torch.tensor([[0.9, 0.5], [0.0, 0.9]])
        >>> y, _, _ = bicgstab_solver(lambda y: y @ a.T + 1, torch.zeros(1, 2), tol=1e-10)
        >>> torch.allclose(y, torch.linalg.solve(torch.eye(2) - a, torch.ones(2)))
        True

    References:
        van der Vorst, SIAM J. Sci. Stat. Comput., 1992.
    """
    return solve(
        func,
        x0,
        BiCGStabRule(),
        where="bicgstab_solver",
        max_iter=max_iter,
        tol=tol,
        stop_mode=stop_mode,
        indexing=indexing,
        return_final=return_final,
    )
