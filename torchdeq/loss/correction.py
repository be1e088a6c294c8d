"""Fixed-point correction: a weighted loss over the states that converge to the fixed point."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch

from torchdeq.utils.checks import OptionError, Registry, check_kwargs

__all__ = ["fp_correction", "register_weight_func"]


def const_weight(n: int, k: int) -> float:
    """Weight 1 for every state."""
    return 1.0


def linear_weight(n: int, k: int) -> float:
    """Weight ``(k + 1) / n``: rising linearly to 1 at the last state."""
    return (k + 1) / n


def exp_weight(n: int, k: int, gamma: float = 0.8) -> float:
    """Weight ``gamma ** (n - 1 - k)``: decaying geometrically away from the last state."""
    return gamma ** (n - 1 - k)


_weight_func = Registry(
    "weight_func", {"const": const_weight, "linear": linear_weight, "exp": exp_weight}
)


def register_weight_func(name: str, func: Callable[..., float]) -> None:
    """Registers a new weight function for fixed point correction.

    The weight function maps ``(n, k)`` to a float, the weight of the loss of the ``k``-th state
    (0-based) in a sequence of ``n`` states converging to the fixed point. Further keyword
    arguments of ``func`` become the keyword arguments ``fp_correction`` accepts for it.

    Args:
        name (str): Identifier to associate with the new weight function.
        func (callable): The weight function, mapping ``(n, k, **kwargs)`` to a float.

    Raises:
        OptionError: If ``func`` is not callable (OptionError is an AssertionError).

    Example:
        >>> register_weight_func('last', lambda n, k: float(k == n - 1))
    """
    if not callable(func):
        raise OptionError(f"weight function {name!r} must be callable, got {func!r}")
    _weight_func.register(name, func)


def _weight_options(func: Callable[..., float]) -> set[str] | None:
    """Keyword arguments of ``func`` beyond ``(n, k)``; None if it takes ``**kwargs``."""
    try:
        params = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):  # some builtins have no signature: accept anything
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params[2:]}


def fp_correction(
    crit: Callable[..., torch.Tensor],
    args: Sequence[Any],
    weight_func: str = "exp",
    return_loss_values: bool = False,
    **kwargs: Any,
) -> torch.Tensor | tuple[torch.Tensor, list[float]]:
    """Computes the fixed-point correction loss for stabilising DEQ models.

    Applies ``crit`` to each state of a sequence converging to the fixed point and sums the
    losses weighted by ``weight_func``: ``loss = sum_k w(n, k) * crit(*args_k)``. Elements of
    ``args`` that are lists or tuples are sequences; any other element is passed unchanged to
    every call. Sequences are aligned at their end, where the fixed-point estimate is: ``n`` is
    the longest length, and a sequence of length ``m < n`` supplies its element ``k - (n - m)``
    at position ``k``, its first element repeated for the first ``n - m`` positions.

    Weight functions ('const': 1; 'linear': ``(k + 1) / n``; 'exp': ``gamma ** (n - 1 - k)``
    with keyword argument ``gamma``, default 0.8) give the last state weight 1.

    Args:
        crit (callable): Loss function, e.g. an ``nn.Module`` or a lambda, returning a tensor.
        args (list or tuple): Arguments to pass to ``crit``.
        weight_func (str, optional): Name of the weight function. Default 'exp'.
        return_loss_values (bool, optional): Whether to also return the unweighted loss of
            every state as floats. Default False.
        **kwargs: Keyword arguments of the weight function (e.g. ``gamma`` for 'exp').

    Returns:
        torch.Tensor: The weighted loss. With ``return_loss_values``, a tuple of the loss and
        ``list[float]``, the unweighted loss of each of the ``n`` states.

    Raises:
        OptionError: If ``weight_func`` is not registered or ``kwargs`` has unknown keys.
        TypeError: If ``args`` is not a list or tuple.
        ValueError: If a sequence in ``args`` is empty.

    Example:
        >>> x = [torch.randn(16, 32, 32) for _ in range(3)]
        >>> y = torch.randn(16, 32, 32)
        >>> mask = torch.rand(16, 32, 32)
        >>> crit = lambda x, y, mask: ((x - y) * mask).abs().mean()
        >>> loss = fp_correction(crit, (x, y, mask))

    References:
        Bai, Geng, Savani and Kolter. Deep Equilibrium Optical Flow Estimation.
        CVPR 2022, arXiv:2204.08442.
    """
    func = _weight_func.lookup(weight_func)
    valid = _weight_options(func)
    if valid is not None:
        check_kwargs(f"fp_correction(weight_func={weight_func!r})", kwargs, valid)
    if not isinstance(args, (list, tuple)):
        raise TypeError(f"args must be a list or tuple of crit's arguments, got {type(args)}")
    lengths = [len(a) for a in args if isinstance(a, (list, tuple))]
    if any(m == 0 for m in lengths):
        raise ValueError("fp_correction got an empty sequence in args")
    n = max(lengths, default=1)

    def at(arg: Any, k: int) -> Any:
        if not isinstance(arg, (list, tuple)):
            return arg
        return arg[max(k - (n - len(arg)), 0)]

    loss, values = 0.0, []
    for k in range(n):
        value = crit(*(at(a, k) for a in args))
        loss = loss + func(n, k, **kwargs) * value
        if return_loss_values:
            values.append(torch.as_tensor(value).detach().reshape(()))
    if not return_loss_values:
        return loss
    # One host-device synchronisation for all the values, not one per state.
    device = values[0].device
    return loss, torch.stack([v.to(device, torch.float64) for v in values]).tolist()
