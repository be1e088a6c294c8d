"""Backward passes of implicit models: implicit differentiation and phantom gradients.

:func:`backward_factory` builds a gradient functor ``grad_fn(trainer, func, z_pred, writer=None)``
that takes a fixed-point estimate computed without autograd and returns tensors that carry
gradients to the parameters of ``func`` (and to whatever ``func`` closes over).

References:
    Almeida, "A learning rule for asynchronous perceptrons with feedback in a combinatorial
    environment", ICNN 1987; Pineda, "Generalization of back-propagation to recurrent neural
    networks", PRL 1987; Liao et al., "Reviving and Improving Recurrent Back-Propagation",
    ICML 2018 (arXiv 1803.06396); Bai, Kolter, Koltun, "Deep Equilibrium Models", NeurIPS 2019
    (arXiv 1909.01377); Geng et al., "Is Attention Better Than Matrix Decomposition?", ICLR 2021
    (arXiv 2109.04553); Fung et al., "JFB: Jacobian-Free Backpropagation for Implicit Networks",
    AAAI 2022 (arXiv 2103.12803); Geng et al., "On Training Implicit Models", NeurIPS 2021
    (arXiv 2111.05177).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from torchdeq.solver import resolve_solver, solver_name, solver_options
from torchdeq.utils.checks import OptionError, check_kwargs
from torchdeq.utils.config import check_option

#: Options of a solver that the caller, not the user's option dict, controls.
MANAGED_SOLVER_OPTIONS = frozenset({"max_iter", "tol", "stop_mode", "indexing"})

GradFn = Callable[..., list]


def check_solver_kwargs(
    solver: str | Callable,
    kwargs: dict,
    extra: Sequence[str] = (),
    where: str = "solver_kwargs",
    name: str | None = None,
) -> dict:
    """Returns the options of ``kwargs`` that ``solver`` takes; reports the others.

    An unknown option is dropped with an :class:`~torchdeq.utils.checks.OptionWarning` (an
    :class:`OptionError` in strict mode) naming it, ``where`` it was given and the valid ones.

    Args:
        solver (str | callable): A registered solver name or a solver function.
        kwargs (dict): The options.
        extra (Sequence[str]): Further accepted keys (e.g. ``max_iter`` where the caller
            allows it).
        where (str): The argument that held ``kwargs``, for the message.
        name (str, optional): The solver's name in the message (default its key or
            ``__name__``).

    Returns:
        dict: ``kwargs`` without the unknown options.
    """
    options = solver_options(solver)
    if options is None:  # a solver that takes arbitrary options
        return dict(kwargs)
    valid = (options - MANAGED_SOLVER_OPTIONS) | set(extra)
    return check_kwargs(f"solver {name or solver_name(solver)!r} ({where})", kwargs, valid)


class _ImplicitBackward(torch.autograd.Function):
    """Identity in the forward pass; solves the implicit linear system in the backward pass."""

    @staticmethod
    def forward(ctx, f_z: torch.Tensor, solve: Callable) -> torch.Tensor:
        ctx.solve = solve
        return f_z.view_as(f_z)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return ctx.solve(grad), None


def _ift_solve(f_z, z, grad, solver, solver_kwargs, writer):
    """Solves ``y = J_f(z)^T y + grad`` for ``y`` with a fixed-point solver."""

    def vjp_plus_grad(y):
        vjp = torch.autograd.grad(f_z, z, y, retain_graph=True, allow_unused=True)[0]
        return grad if vjp is None else vjp + grad  # None: f does not depend on z

    y, _, info = solver(vjp_plus_grad, torch.zeros_like(grad), **solver_kwargs)
    if writer is not None:
        writer(info)
    return y


def _make_ift(hook_ift: bool, solver: Callable, solver_kwargs: dict) -> GradFn:
    def ift_grad(trainer, func, z_pred, writer=None, **kwargs) -> list[torch.Tensor]:
        z = z_pred.detach().requires_grad_()
        with torch.enable_grad():
            f_z = func(z)
        if not f_z.requires_grad:  # nothing to differentiate: f has no trainable inputs
            return [f_z]

        def solve(grad):
            return _ift_solve(f_z, z, grad, solver, solver_kwargs, writer)

        if not hook_ift:
            return [_ImplicitBackward.apply(f_z, solve)]

        def hook(grad):
            # The vector-Jacobian products inside `solve` backpropagate from f_z again, which
            # would re-enter this hook; remove it first (one backward pass per forward pass).
            handle.remove()
            return solve(grad)

        handle = f_z.register_hook(hook)
        return [f_z]

    return ift_grad


def _make_phantom(k: int, tau: float, sup_gap: int, sup_loc: Sequence[int] | None) -> GradFn:
    keep = set(range(sup_gap, k + 1, sup_gap)) if sup_gap > 0 else set()
    keep |= set(sup_loc or ())
    keep.add(k)

    def phantom_grad(trainer, func, z_pred, writer=None, **kwargs) -> list[torch.Tensor]:
        z = z_pred.detach()
        states = []
        with torch.enable_grad():
            for step in range(1, k + 1):
                f_z = func(z)
                z = f_z if tau == 1.0 else tau * f_z + (1.0 - tau) * z
                if step in keep:
                    states.append(z)
        return states

    return phantom_grad


def backward_factory(
    grad_type: str | int = "ift",
    hook_ift: bool = False,
    b_solver: str | None = None,
    b_solver_kwargs: dict | None = None,
    sup_gap: int = -1,
    sup_loc: Sequence[int] | None = None,
    tau: float = 1.0,
    **grad_factory_kwargs: Any,
) -> GradFn:
    """Builds a gradient functor for implicit models: implicit differentiation or phantom grad.

    Implicit differentiation (``grad_type='ift'``) returns ``f(z*)`` whose backward pass solves
    ``y = J_f(z*)^T y + dL/dz*`` with ``b_solver`` and sends ``y`` through ``f``: the exact
    gradient at a fixed point, with memory independent of the forward solver's steps. The
    ``torch.autograd.Function`` implementation (default) supports repeated backward passes; the
    hook implementation (``hook_ift=True``) holds one graph fewer but serves one backward pass.

    Phantom gradients (``grad_type=k``, an int) unroll ``k`` damped steps
    ``z <- tau * f(z) + (1 - tau) * z`` from the detached estimate with autograd on, and return
    the states selected by ``sup_gap`` / ``sup_loc`` followed by the last one.

    Args:
        grad_type (str or int): ``'ift'`` or the number of phantom gradient steps (default
            ``'ift'``).
        hook_ift (bool): Use the backward-hook implementation of IFT. Default False.
        b_solver (str or callable, optional): Solver of the IFT linear system: a registered
            name or a solver function (what ``get_solver`` returns). Default
            ``'fixed_point_iter'``.
        b_solver_kwargs (dict, optional): Options of the backward solver: ``max_iter``, ``tol``,
            ``stop_mode`` and the solver's own options. Unknown options are ignored with an
            OptionWarning (an OptionError in strict mode).
        sup_gap (int): Also return every ``sup_gap``-th phantom state if > 0. Default -1.
        sup_loc (list[int], optional): Also return the phantom states at these steps (1..k).
        tau (float): Damping of phantom gradients, in (0, 1]. Default 1.0. 0.5-0.7 suits MDEQ.
        **grad_factory_kwargs: Extra arguments are ignored, with an OptionWarning naming them
            (an OptionError in strict mode, see :func:`~torchdeq.utils.checks.strict`).

    Returns:
        callable: ``grad_fn(trainer, func, z_pred, writer=None) -> list[Tensor]``. ``writer``, if
        given, receives the backward solver's statistics (a SolverStat) during backward.

    Raises:
        OptionError: On an unknown solver or an invalid value (and in strict mode on an
            unknown option).

    Example:
        >>> lin = torch.nn.Linear(4, 4)
        >>> f = lambda z: torch.tanh(0.5 * lin(z))
        >>> grad_fn = backward_factory('ift', b_solver_kwargs=dict(max_iter=30, tol=1e-8))
        >>> z = grad_fn(None, f, torch.zeros(2, 4))[-1]
        >>> z.sum().backward()
    """
    check_kwargs("backward_factory", grad_factory_kwargs, ())
    if grad_type == "ift":
        b_solver = b_solver or "fixed_point_iter"
        solver = resolve_solver(b_solver)
        solver_kwargs = check_solver_kwargs(
            solver,
            dict(b_solver_kwargs or {}),
            extra=("max_iter", "tol", "stop_mode"),
            where="b_solver_kwargs",
            name=solver_name(b_solver),
        )
        return _make_ift(hook_ift, solver, solver_kwargs)
    if isinstance(grad_type, bool) or not isinstance(grad_type, int) or grad_type < 1:
        raise OptionError(
            f"grad_type must be 'ift' or a number of phantom gradient steps >= 1, got {grad_type!r}"
        )
    tau = check_option("tau", tau, "backward_factory")
    sup_loc = check_option("sup_loc", sup_loc, "backward_factory")
    bad = [loc for loc in (sup_loc or ()) if loc > grad_type]
    if bad:
        raise OptionError(
            f"sup_loc entries must lie in [1, {grad_type}] (the grad steps), got {bad}"
        )
    return _make_phantom(
        grad_type, tau, check_option("sup_gap", sup_gap, "backward_factory"), sup_loc
    )
