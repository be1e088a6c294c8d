"""A bank of fixed-point problems ``z = f(z)`` with known solutions (float64, fixed seeds).

Every problem is a contraction near its fixed point, so every solver (plain iteration
included) reaches the solution within ``max_iter`` steps. A new problem is one more entry in
``PROBLEMS``; tests parametrised over it cover every solver.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

DTYPE = torch.float64
#: the fixed point of cos (the Dottie number)
DOTTIE = 0.7390851332151607


@dataclass(frozen=True)
class Problem:
    """A fixed-point problem with its exact solution.

    Args:
        name (str): Test id.
        func (callable): The map ``f``.
        x0 (torch.Tensor): Initial guess.
        solution (torch.Tensor): The exact fixed point, shaped like ``x0``.
        max_iter (int): Enough steps of plain fixed-point iteration to reach about 1e-12.
    """

    name: str
    func: Callable[[Tensor], Tensor]
    x0: Tensor
    solution: Tensor
    max_iter: int = 400


def contraction(batch: int, dim: int, norm: float, seed: int) -> Tensor:
    """Random ``(batch, dim, dim)`` matrices with spectral norm ``norm``."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(batch, dim, dim, generator=gen, dtype=DTYPE)
    return norm * a / torch.linalg.matrix_norm(a, ord=2)[:, None, None]


def affine(
    batch: int = 3, dim: int = 8, norm: float = 0.5, seed: int = 0, device: str = "cpu"
) -> Problem:
    """``z = A z + b`` per sample; the solution is ``(I - A)^-1 b``."""
    a = contraction(batch, dim, norm, seed)
    b = torch.randn(batch, dim, generator=torch.Generator().manual_seed(seed + 1), dtype=DTYPE)
    solution = torch.linalg.solve(torch.eye(dim, dtype=DTYPE) - a, b)
    a, b = a.to(device), b.to(device)

    def f(z: Tensor) -> Tensor:
        return (a @ z[..., None])[..., 0] + b

    x0 = torch.zeros(batch, dim, dtype=DTYPE, device=device)
    return Problem("affine", f, x0, solution.to(device))


def cos_scalar() -> Problem:
    """``z = cos(z)`` on a 0-d tensor."""
    x0 = torch.tensor(0.0, dtype=DTYPE)
    return Problem("cos_scalar", torch.cos, x0, torch.tensor(DOTTIE, dtype=DTYPE))


def cos_batch() -> Problem:
    """``z = cos(z)`` on a batch of scalars ``(B,)`` from different starts."""
    x0 = torch.tensor([-1.0, 0.0, 0.5, 2.0], dtype=DTYPE)
    return Problem("cos_batch", torch.cos, x0, torch.full_like(x0, DOTTIE))


def sqrt2() -> Problem:
    """The Babylonian map ``z = (z + 2 / z) / 2``, whose fixed point is sqrt(2)."""
    x0 = torch.tensor([1.0, 3.0], dtype=DTYPE)
    return Problem("sqrt2", lambda z: 0.5 * (z + 2 / z), x0, torch.full_like(x0, math.sqrt(2)), 100)


def mixed_difficulty(rates: tuple[float, ...] = (0.1, 0.5, 0.9)) -> Problem:
    """Scalars ``z_b = c_b z_b + 1`` from 0: the residual of ``z_j`` is exactly ``c_b^j``."""
    c = torch.tensor(rates, dtype=DTYPE)
    return Problem("mixed_difficulty", lambda z: c * z + 1, torch.zeros_like(c), 1 / (1 - c))


def conv_like(batch: int = 2, channels: int = 2, size: int = 4, seed: int = 3) -> Problem:
    """``z = 0.5 conv(z) / ||conv|| + x`` on ``(B, C, H, W)``; solved exactly as a dense system."""
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(channels, channels, 3, 3, generator=gen, dtype=DTYPE)
    x = torch.randn(batch, channels, size, size, generator=gen, dtype=DTYPE)
    dim = channels * size * size

    def conv(z: Tensor) -> Tensor:
        return torch.nn.functional.conv2d(z, weight, padding=1)

    basis = torch.eye(dim, dtype=DTYPE).view(dim, channels, size, size)
    matrix = conv(basis).reshape(dim, dim).T  # column j is conv(e_j)
    gain = 0.5 / torch.linalg.matrix_norm(matrix, ord=2)
    solution = torch.linalg.solve(
        torch.eye(dim, dtype=DTYPE) - gain * matrix, x.reshape(batch, dim).T
    )

    def f(z: Tensor) -> Tensor:
        return gain * conv(z) + x

    return Problem("conv_like", f, torch.zeros_like(x), solution.T.reshape(x.shape))


PROBLEMS = [affine(), cos_scalar(), cos_batch(), sqrt2(), mixed_difficulty(), conv_like()]
