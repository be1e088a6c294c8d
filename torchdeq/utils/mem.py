"""Gradient checkpointing for iterative graphs: constant activation memory."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch.utils.checkpoint import checkpoint

__all__ = ["mem_gc"]


def mem_gc(func: Callable[..., Any], in_args: Any = None) -> Any:
    """Runs ``func(*in_args)`` with gradient checkpointing.

    The forward pass stores no activations of ``func``; the backward pass recomputes them and
    then applies the vector-Jacobian product, so a graph of many unrolled steps costs the memory
    of one. Gradients reach ``func``'s parameters and every input tensor that requires grad. It
    wraps ``torch.utils.checkpoint.checkpoint`` with ``use_reentrant=False``, the variant that
    works with DistributedDataParallel, inputs that do not require grad, and ``autograd.grad``.
    Random number generator state is restored for the recomputation, so stochastic layers see
    the same draws.

    Args:
        func (torch.nn.Module or callable): The function whose activations are not stored.
        in_args (tuple, optional): Input arguments for ``func``; a single tensor is wrapped in a
            tuple. Default None (no arguments).

    Returns:
        The output of ``func``.

    Example:
        >>> layer = torch.nn.Linear(8, 8)
        >>> x = torch.randn(4, 8, requires_grad=True)
        >>> y = mem_gc(layer, (x,))
        >>> y.sum().backward()
    """
    if in_args is None:
        in_args = ()
    elif not isinstance(in_args, (tuple, list)):
        in_args = (in_args,)
    return checkpoint(func, *in_args, use_reentrant=False)
