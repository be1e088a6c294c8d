"""Which options a solver takes, and the wrapper that reports unknown ones."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

# The value validators live in torchdeq.utils.checks; solver code also finds them here.
from torchdeq.utils.checks import (  # noqa: F401
    STOP_MODES,
    check_indexing,
    check_int,
    check_kwargs,
    check_real,
    check_stop_mode,
)

_POS_ONLY = inspect.Parameter.POSITIONAL_ONLY
_POS_OR_KW = inspect.Parameter.POSITIONAL_OR_KEYWORD
_VAR_POS = inspect.Parameter.VAR_POSITIONAL
_VAR_KW = inspect.Parameter.VAR_KEYWORD


def _option_params(solver: Callable) -> tuple[list[inspect.Parameter], bool]:
    """The named parameters after ``(func, x0)``, and whether ``solver`` takes ``**kwargs``."""
    params = list(inspect.signature(solver).parameters.values())
    positional = [p for p in params if p.kind in (_POS_ONLY, _POS_OR_KW)]
    skip = {p.name for p in positional[:2]}
    named = [p for p in params if p.name not in skip and p.kind not in (_VAR_POS, _VAR_KW)]
    return named, any(p.kind is _VAR_KW for p in params)


def named_options(solver: Callable) -> frozenset[str] | None:
    """Names of the keyword options ``solver`` takes beyond ``(func, x0)``.

    Args:
        solver (callable): A solver function ``solver(func, x0, ...)``.

    Returns:
        frozenset[str] | None: The option names, or None when ``solver`` takes ``**kwargs``
        without declaring (through a ``strict_options`` attribute, see :func:`strict_options`)
        that it rejects unknown ones.

    Example:
        >>> named_options(lambda func, x0, max_iter=10: None)
        frozenset({'max_iter'})
    """
    declared = getattr(solver, "strict_options", None)
    if declared is not None:
        return frozenset(declared)
    named, var_kw = _option_params(solver)
    return None if var_kw else frozenset(p.name for p in named)


def strict_options(solver: Callable) -> Callable:
    """Makes ``solver`` report keyword options that its signature does not name.

    The spec keeps ``**kwargs`` in every solver signature ("extra arguments are ignored"); this
    wrapper drops any key that lands there with an
    :class:`~torchdeq.utils.checks.OptionWarning` naming it and the valid options (an
    :class:`OptionError` in strict mode), and records the valid names in the
    ``strict_options`` attribute (read by ``solver_options``).

    Args:
        solver (callable): A solver ``solver(func, x0, ..., **kwargs)``.

    Returns:
        callable: The checked solver, with the same signature and docstring.

    Example:
        >>> @strict_options
        ... def my_solver(func, x0, max_iter=10, **kwargs):
        ...     return x0, [], {}
        >>> sorted(my_solver.strict_options)
        ['max_iter']
    """
    names = frozenset(p.name for p in _option_params(solver)[0])

    @functools.wraps(solver)
    def checked(func: Callable, x0: Any, *args: Any, **kwargs: Any) -> Any:
        return solver(func, x0, *args, **check_kwargs(solver.__name__, kwargs, names))

    checked.strict_options = names
    return checked
