"""Weight normalisation: ``w = g * v / ||v||``, the norm taken over all dims but one."""

from __future__ import annotations

import torch
from torch import nn

from torchdeq.norm.base import BaseNorm

# Guards the division for an all-zero slice (zero-initialised layers) against NaN.
_EPS = 1e-12


def norm_except_dim(v: torch.Tensor, dim: int | None) -> torch.Tensor:
    """The 2-norm of ``v`` over every dimension except ``dim``, broadcastable against ``v``.

    Args:
        v (torch.Tensor): The tensor.
        dim (int | None): The dimension kept; None takes the norm of the whole tensor.

    Returns:
        torch.Tensor: Shape ``v.shape`` with every dimension but ``dim`` set to 1.
    """
    if dim is None:
        return torch.linalg.vector_norm(v)
    reduce = [d for d in range(v.dim()) if d != dim]
    if not reduce:
        return v.abs()
    return torch.linalg.vector_norm(v, dim=reduce, keepdim=True)


class WeightNorm(BaseNorm):
    """Weight normalisation for DEQ layers.

    Each weight ``w`` is reparametrised as ``w = g * v / ||v||``, where the norm runs over all
    dimensions except ``dim`` (the output channels). With ``learn_scale`` the Parameter ``g``
    (``<name>_g``) is initialised to ``||v||``, so applying the norm leaves the module's function
    unchanged; otherwise ``g`` is the constant ``target_norm``. With ``clip`` the magnitude of
    ``g`` is clipped at ``clip_value``. The direction is the Parameter ``<name>_v``.

    The effective weight is cached between solver calls made without gradients; see
    :mod:`torchdeq.norm.base` for when it is recomputed.

    Example:
        >>> layer = torch.nn.Linear(4, 3)
        >>> norm = WeightNorm.apply(layer, names='weight', dims=0)
        >>> sorted(n for n, _ in layer.named_parameters())
        ['bias', 'weight_g', 'weight_v']

    References:
        Salimans and Kingma. Weight Normalization: A Simple Reparameterization to Accelerate
        Training of Deep Neural Networks. NeurIPS 2016, arXiv:1602.07868.
    """

    _target_modules = {
        nn.Linear: ("weight", 0),
        nn.Conv1d: ("weight", 0),
        nn.Conv2d: ("weight", 0),
        nn.Conv3d: ("weight", 0),
        # Transposed convolutions store weights as (in, out / groups, *kernel).
        nn.ConvTranspose1d: ("weight", 1),
        nn.ConvTranspose2d: ("weight", 1),
        nn.ConvTranspose3d: ("weight", 1),
    }

    def _reparametrise(self, module: nn.Module, name: str, dim: int | None) -> None:
        weight = module._parameters.pop(name)
        if self.learn_scale:
            g = norm_except_dim(weight.detach(), dim).clone()
            self._own(module, f"{name}_g", nn.Parameter(g, weight.requires_grad))
        self._own(module, f"{name}_v", nn.Parameter(weight.detach(), weight.requires_grad))

    def compute_weight(self, module: nn.Module, name: str, dim: int | None) -> torch.Tensor:
        """Computes the weight with weight normalisation.

        Args:
            module (torch.nn.Module): The module which holds the weight tensor.
            name (str): The name of the weight parameter.
            dim (int): The dimension kept by the norm.

        Returns:
            torch.Tensor: The normalised weight, differentiable when gradients are enabled.
        """
        v = getattr(module, f"{name}_v")
        g = getattr(module, f"{name}_g") if self.learn_scale else None
        return v * (self._scale(g) / norm_except_dim(v, dim).clamp_min(_EPS))
