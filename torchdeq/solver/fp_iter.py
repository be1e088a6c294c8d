"""Fixed-point iteration: the damped step ``z <- (1 - tau) z + tau f(z)``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor

from torchdeq.solver.loop import UpdateRule, iterate, solve
from torchdeq.solver.options import strict_options
from torchdeq.solver.stat import SolverStat
from torchdeq.utils.checks import check_real


class DampedStep(UpdateRule):
    """``z_k = z + tau (f(z) - z)``; with ``tau = 1`` simply ``f(z)``.

    Args:
        tau (float): Damping factor (step size); values above 1 over-relax.
    """

    def __init__(self, tau: float):
        self.tau = tau

    def step(self, k: int, z: Tensor, fz: Tensor, g: Tensor | None) -> tuple[Tensor, None]:
        if self.tau == 1.0:
            return fz, None
        return torch.lerp(z, fz, self.tau), None


@strict_options
def fixed_point_iter(
    func: Callable[[Tensor], Tensor],
    x0: Tensor,
    max_iter: int = 50,
    tol: float = 1e-3,
    stop_mode: Literal["abs", "rel"] = "abs",
    indexing: list[int] | None = None,
    tau: float = 1.0,
    return_final: bool = False,
    **kwargs: Any,
) -> tuple[Tensor, list[Tensor], SolverStat]:
    """Implements the fixed-point iteration solver for solving a system of nonlinear equations.

    Iterates ``z_k = (1 - tau) z_{k-1} + tau f(z_{k-1})`` from ``z_0 = x0``, monitoring the
    residual ``||f(z) - z||`` of every iterate per sample. Each call of ``f`` is one step.

    Args:
        func (callable): The function for which we seek a fixed point.
        x0 (torch.Tensor): The initial guess ``(B, ...)``; a 0-d tensor is one sample and a
            ``(B,)`` tensor B scalar samples.
        max_iter (int, optional): The maximum number of iterations (calls of ``func``).
            Default: 50.
        tol (float, optional): The convergence criterion: a sample is finished when its lowest
            residual is below ``tol``; ``tol <= 0`` runs every step. Default: 1e-3.
        stop_mode (str, optional): The stopping criterion, ``'abs'`` or ``'rel'``.
            Default: ``'abs'``.
        indexing (list, optional): Steps (1-based) whose iterates to return. Default: None.
        tau (float, optional): Damping factor (step size towards ``f(z)``). Default: 1.0.
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
        >>> f = lambda z: torch.cos(z)
        >>> z_star, _, info = fixed_point_iter(f, torch.tensor(0.0), max_iter=100, tol=1e-6)
        >>> bool((z_star - f(z_star)).abs() < 1e-5)
        True
    """
    tau = check_real("fixed_point_iter", "tau", tau, low=0.0, strict=True)
    return solve(
        func,
        x0,
        DampedStep(tau),
        where="fixed_point_iter",
        max_iter=max_iter,
        tol=tol,
        stop_mode=stop_mode,
        indexing=indexing,
        return_final=return_final,
    )


@strict_options
def simple_fixed_point_iter(
    func: Callable[[Tensor], Tensor],
    x0: Tensor,
    max_iter: int = 50,
    tau: float = 1.0,
    indexing: list[int] | None = None,
    tol: float | None = None,
    stop_mode: str | None = None,
    return_final: bool = True,
    **kwargs: Any,
) -> tuple[Tensor, list[Tensor], SolverStat]:
    """Implements a simplified fixed-point solver for solving a system of nonlinear equations.

    Speeds up by removing statistics monitoring: exactly ``max_iter`` damped steps
    ``z_k = (1 - tau) z_{k-1} + tau f(z_{k-1})``, returning the last iterate.

    Args:
        func (callable): The function for which the fixed point is to be computed.
        x0 (torch.Tensor): The initial guess for the fixed point.
        max_iter (int, optional): The number of iterations. Default: 50.
        tau (float, optional): Damping factor to control the step size in the solution
            direction. Default: 1.0.
        indexing (list, optional): Steps (1-based) whose iterates to return. Default: None.
        tol (float, optional): Accepted for a uniform solver interface and ignored.
        stop_mode (str, optional): Accepted for a uniform solver interface and ignored.
        return_final (bool, optional): Accepted for a uniform solver interface and ignored
            (the final iterate is always returned).
        **kwargs: Extra arguments are ignored, with an OptionWarning naming them (an
            OptionError in strict mode, see :func:`~torchdeq.utils.checks.strict`).

    Returns:
        tuple[torch.Tensor, list[torch.Tensor], SolverStat]: The approximate solution, the
        iterates at the ``indexing`` steps, and a dummy statistics dict whose values are all
        ``-1`` of shape ``(1, 1)``.

    Raises:
        OptionError: For an invalid value (or, in strict mode, an unknown option).
        ValueError: If ``func`` changes the shape of its input.

    Example:
        >>> f = lambda z: torch.cos(z)
        >>> z_star, _, _ = simple_fixed_point_iter(f, torch.tensor(0.0), max_iter=100)
        >>> bool((z_star - f(z_star)).abs() < 1e-5)
        True
    """
    tau = check_real("simple_fixed_point_iter", "tau", tau, low=0.0, strict=True)
    z_star, states = iterate(
        func,
        x0,
        DampedStep(tau),
        where="simple_fixed_point_iter",
        max_iter=max_iter,
        indexing=indexing,
    )
    return z_star, states, SolverStat.dummy(x0.device)
