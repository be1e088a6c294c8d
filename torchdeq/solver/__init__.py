"""Fixed-point solvers for Deep Equilibrium Models, and their registry.

The *torchdeq.solver* module provides a set of solvers for finding fixed points in Deep
Equilibrium Models (DEQs): Anderson acceleration (``anderson_solver``), Broyden's method
(``broyden_solver``), fixed-point iteration (``fixed_point_iter``) and a faster fixed-point
iteration without convergence monitoring (``simple_fixed_point_iter``), and, for the linear
system of the implicit backward pass only, GMRES (``gmres_solver``) and BiCGStab
(``bicgstab_solver``); :func:`is_backward_only` tells which.

Every solver is called as ``solver(func, x0, **options)`` and returns
``(z_star, states, info)``. Unknown options are ignored with an
:class:`~torchdeq.utils.checks.OptionWarning` (an ``OptionError`` in strict mode).
On the CPU, Anderson and Broyden reuse their history buffers between solves of one size
(:mod:`torchdeq.solver.workspace`; ``workspace.release()`` frees them).

Example:
    >>> solver = get_solver('anderson')
    >>> z_star, _, info = solver(torch.cos, torch.zeros(4), tol=1e-6)
    >>> info['nstep'].shape
    torch.Size([4])
"""

from __future__ import annotations

from collections.abc import Callable

import torch  # noqa: F401 (used by the doctest examples)

from torchdeq.solver.anderson import anderson_solver
from torchdeq.solver.broyden import broyden_solver
from torchdeq.solver.fp_iter import fixed_point_iter, simple_fixed_point_iter
from torchdeq.solver.krylov import bicgstab_solver, gmres_solver
from torchdeq.solver.options import named_options
from torchdeq.solver.stat import SolverStat, solver_stat_from_final_step
from torchdeq.utils.checks import OptionError, Registry

__all__ = [
    "SolverStat",
    "anderson_solver",
    "bicgstab_solver",
    "broyden_solver",
    "fixed_point_iter",
    "get_solver",
    "gmres_solver",
    "is_backward_only",
    "register_solver",
    "resolve_solver",
    "simple_fixed_point_iter",
    "solver_options",
    "solver_stat_from_final_step",
]

_SOLVERS = Registry(
    "solver",
    {
        "anderson": anderson_solver,
        "broyden": broyden_solver,
        "fixed_point_iter": fixed_point_iter,
        "simple_fixed_point_iter": simple_fixed_point_iter,
        "gmres": gmres_solver,
        "bicgstab": bicgstab_solver,
    },
)


def get_solver(key: str) -> Callable:
    """Retrieves a fixed point solver from the registered solvers by its key.

    Supported solvers: 'anderson', 'broyden', 'fixed_point_iter', 'simple_fixed_point_iter',
    the backward-only 'gmres' and 'bicgstab', plus any added with :func:`register_solver`.

    Args:
        key (str): The key of the solver to retrieve.

    Returns:
        callable: The solver function associated with ``key``.

    Raises:
        OptionError: (an ``AssertionError`` and a ``ValueError``) If ``key`` is not
            registered; the message lists the registered keys.

    Example:
        >>> solver = get_solver('anderson')
    """
    return _SOLVERS.lookup(key)


def resolve_solver(solver: str | Callable) -> Callable:
    """The solver function for a registered name, or ``solver`` itself if it is callable.

    Args:
        solver (str | callable): A key of :func:`get_solver` or a solver function (what
            :func:`get_solver` returns and :func:`register_solver` takes).

    Returns:
        callable: The solver function.

    Raises:
        OptionError: If ``solver`` is neither a registered key nor callable.

    Example:
        >>> resolve_solver(anderson_solver) is resolve_solver('anderson')
        True
    """
    if callable(solver):
        return solver
    if not isinstance(solver, str):
        raise OptionError(
            f"solver must be a registered name or a solver function, got {solver!r}; "
            f"registered: {', '.join(repr(k) for k in sorted(_SOLVERS))}"
        )
    return get_solver(solver)


def solver_name(solver: str | Callable) -> str:
    """A name for ``solver`` in messages: the key itself, or the function's ``__name__``."""
    return solver if isinstance(solver, str) else getattr(solver, "__name__", repr(solver))


def register_solver(solver_type: str, solver: Callable) -> None:
    """Registers a user-defined fixed point solver under ``solver_type``.

    The solver can then be designated with ``args.f_solver`` and ``args.b_solver``. It is
    called as ``solver(func, x0, max_iter=..., tol=..., stop_mode=..., indexing=...,
    return_final=..., **options)`` and must return ``(z_star, states, info)``. An existing
    key is replaced.

    Args:
        solver_type (str): The key of the solver.
        solver (callable): The solver function.

    Raises:
        OptionError: If ``solver_type`` is not a string.
        TypeError: If ``solver`` is not callable.

    Example:
        >>> def newton_solver(func, x0, max_iter=50, **kwargs):
        ...     return fixed_point_iter(func, x0, max_iter=max_iter)
        >>> register_solver('newton', newton_solver)
    """
    if not callable(solver):
        raise TypeError(f"solver for {solver_type!r} must be callable, got {solver!r}")
    _SOLVERS.register(solver_type, solver)


def solver_options(solver: Callable | str) -> frozenset[str] | None:
    """The keyword options a solver accepts beyond ``(func, x0)``.

    Built-in solvers report unknown options, so their options are exactly the named
    parameters of their signatures. A solver that takes ``**kwargs`` without declaring its
    options (through a ``strict_options`` attribute holding the names) accepts anything, and
    gets None.

    Args:
        solver (callable | str): A solver function, or the key of a registered one.

    Returns:
        frozenset[str] | None: The option names, or None when they cannot be known.

    Raises:
        OptionError: If ``solver`` is a key that is not registered.

    Example:
        >>> sorted(solver_options('fixed_point_iter'))
        ['indexing', 'max_iter', 'return_final', 'stop_mode', 'tau', 'tol']
    """
    return named_options(resolve_solver(solver))


def is_backward_only(solver: Callable | str) -> bool:
    """Whether a solver solves only affine fixed points (the IFT backward system).

    Such solvers (``gmres``, ``bicgstab``, or any carrying ``backward_only = True``) see the map
    through differences ``h(x + u) - h(x)``, which are ``J u`` only for an affine map.

    Example:
        >>> is_backward_only('gmres'), is_backward_only('anderson')
        (True, False)
    """
    return bool(getattr(resolve_solver(solver), "backward_only", False))
