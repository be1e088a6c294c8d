"""Initial states for the fixed-point solver."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["mixed_init"]


def mixed_init(
    z_shape: Sequence[int] | torch.Size,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Initialises a tensor of shape ``z_shape`` with half Gaussian random values, half zeros.

    Each entry is drawn from N(0, 1) and then zeroed with probability 0.5 (an independent
    Bernoulli mask), so about half the entries are zero. Starting the solver from such random
    points, instead of always from zeros, trains models whose fixed point does not depend on
    the initial state (path independence).

    Args:
        z_shape (tuple): Shape of the tensor to be initialised.
        device (torch.device, optional): The device of the returned tensor. Default None.
        dtype (torch.dtype, optional): The dtype; None uses the default dtype. Default None.

    Returns:
        torch.Tensor: A tensor of shape ``z_shape`` with random values, about half zeroed.

    Example:
        >>> z0 = mixed_init((4, 16))
        >>> z0.shape
        torch.Size([4, 16])

    References:
        Anil, Pokle, Liang, Treutlein, Wu, Bai, Kolter and Grosse. Path Independent Equilibrium
        Models Can Better Exploit Test-Time Computation. NeurIPS 2022, arXiv:2211.09961.
    """
    z = torch.randn(z_shape, device=device, dtype=dtype)
    keep = torch.rand(z_shape, device=device) < 0.5
    return z * keep
