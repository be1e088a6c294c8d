"""Jacobian statistics of a DEQ layer from vector-Jacobian products: regulariser and radius."""

from __future__ import annotations

import torch

from torchdeq.utils.checks import OptionError

__all__ = ["jac_reg", "power_method"]


def _check_count(what: str, value: int) -> None:
    if not (isinstance(value, int) and value >= 1):
        raise OptionError(f"{what} must be an int >= 1, got {value!r}")


def jac_reg(
    f0: torch.Tensor, z0: torch.Tensor, vecs: int = 1, create_graph: bool = True
) -> torch.Tensor:
    """Estimates ``tr(J^T J) = ||J||_F^2`` of ``J = df0/dz0`` with the Hutchinson estimator.

    With Gaussian vectors ``eps``, ``E ||eps^T J||^2 = tr(J J^T)``; each of the ``vecs`` samples
    costs one vector-Jacobian product. The estimate is divided by ``vecs`` and by the number of
    elements of ``z0`` (``z0.numel()``, batch included), so for a batch of independent samples
    it is the mean over samples of ``||J_b||_F^2 / d`` with ``d`` the size of one sample.

    Args:
        f0 (torch.Tensor): Output of the function f (whose J is to be analysed).
        z0 (torch.Tensor): Input to the function f; ``f0`` must depend on it through autograd.
        vecs (int, optional): Number of random Gaussian vectors to use. Default 1.
        create_graph (bool, optional): Whether to create the backward graph (e.g., to train on
            this loss). Default True.

    Returns:
        torch.Tensor: A scalar (0-dim) tensor, the shape-normalised Jacobian loss.

    Raises:
        OptionError: If ``vecs`` is not a positive int.

    Example:
        >>> z0 = torch.randn(4, 8, requires_grad=True)
        >>> f0 = torch.tanh(z0 @ torch.randn(8, 8))
        >>> loss = jac_reg(f0, z0)

    References:
        Bai, Koltun and Kolter. Stabilizing Equilibrium Models by Jacobian Regularization.
        ICML 2021, arXiv:2106.14342.
        Hutchinson. A Stochastic Estimator of the Trace of the Influence Matrix for Laplacian
        Smoothing Splines. Communications in Statistics, 1989.
    """
    _check_count("vecs", vecs)
    total = 0.0
    for _ in range(vecs):
        eps = torch.randn_like(f0)
        # retain_graph: the caller still back-propagates its main loss through f0.
        (vjp,) = torch.autograd.grad(f0, z0, eps, retain_graph=True, create_graph=create_graph)
        total = total + vjp.pow(2).sum()
    return total / (vecs * z0.numel())


def power_method(
    f0: torch.Tensor, z0: torch.Tensor, n_iters: int = 100
) -> tuple[torch.Tensor, torch.Tensor]:
    """Estimates the spectral radius of ``J = df0/dz0`` per sample with the power method.

    Iterates ``v <- J^T v / ||J^T v||`` with vector-Jacobian products (``J^T`` has the
    eigenvalues of ``J``), normalising each sample separately: ``f`` is assumed to act on every
    sample of the batch (dim 0) independently, so ``J`` is block diagonal. The eigenvalue
    estimate is ``||J^T v||`` for the final unit ``v``, which converges to the largest absolute
    eigenvalue when that eigenvalue is unique in magnitude.

    Args:
        f0 (torch.Tensor): Output of the function f (whose J is to be analysed), shape
            ``(B, ...)``.
        z0 (torch.Tensor): Input to the function f, the same shape as ``f0``.
        n_iters (int, optional): Number of power method iterations. Default 100.

    Returns:
        tuple: (largest eigenvector of ``J^T``, shape of ``z0``; largest absolute eigenvalue,
        shape ``(B,)``), both detached.

    Raises:
        OptionError: If ``n_iters`` is not a positive int.
        ValueError: If ``f0`` and ``z0`` differ in shape.

    Example:
        >>> z0 = torch.randn(4, 8, requires_grad=True)
        >>> f0 = 0.5 * torch.tanh(z0)
        >>> v, radius = power_method(f0, z0, n_iters=20)
        >>> radius.shape
        torch.Size([4])
    """
    _check_count("n_iters", n_iters)
    if f0.shape != z0.shape:
        raise ValueError(f"f0 and z0 must have the same shape, got {f0.shape} and {z0.shape}")
    batch = z0.shape[0]
    per_sample = (batch,) + (1,) * (z0.dim() - 1)

    def sample_norm(t: torch.Tensor) -> torch.Tensor:
        return torch.linalg.vector_norm(t.reshape(batch, -1), dim=1)

    v = torch.randn_like(f0)
    v = v / sample_norm(v).view(per_sample)
    radius = sample_norm(v)
    for _ in range(n_iters):
        (u,) = torch.autograd.grad(f0, z0, v, retain_graph=True)
        radius = sample_norm(u)
        # A zero Jacobian block gives u == 0; keep v finite (the radius is 0 anyway).
        v = u / radius.clamp_min(torch.finfo(u.dtype).tiny).view(per_sample)
    return v.detach(), radius.detach()
