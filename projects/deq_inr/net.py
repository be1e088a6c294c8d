"""Implicit representations made implicit in depth: one wide layer solved to equilibrium.

A coordinate network maps a coordinate ``x`` (a pixel position, a time) to the signal's value
there. Here it has three parts:

    u   = inject(filter(x))          # an input filter (Fourier features, Gabor, sine), then linear
    z*  = act(W z* + u)              # ONE wide layer, solved to its fixed point by torchdeq
    y   = readout(z*)                # linear

The paper's amortisation: the coordinates are the same at every step, so the fixed point of the
last visit of a coordinate is an excellent initial guess for the next one. :class:`DEQINR` keeps
one state per coordinate (:class:`FixedPointCache`, indexed by the data's ``index``) and writes
back the state it ends with; as training settles, the solver needs fewer and fewer steps (the
``train/nstep`` and ``train/rel_residual`` logs show it). Gradients come from the DEQ's backward
(the config's ``grad`` group: one-step or phantom gradients, or IFT).

:class:`ExplicitINR` is the baseline: the same filter feeding an ordinary MLP whose depth is
chosen so that it has as many parameters as the DEQ (:func:`matched_depth`).

References:
    Huang, Bai, Kolter. (Implicit)^2: Implicit Layers for Implicit Representations. NeurIPS 2021.
    Tancik et al. Fourier Features Let Networks Learn High Frequency Functions in Low Dimensional
    Domains. NeurIPS 2020, arXiv:2006.10739.
    Fathony, Sahu, Willmott, Kolter. Multiplicative Filter Networks. ICLR 2021.
    Sitzmann et al. Implicit Neural Representations with Periodic Activation Functions
    (SIREN). NeurIPS 2020, arXiv:2006.09661.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import Tensor, nn

from deqzoo.loss import jac_loss_at
from torchdeq import apply_norm, get_deq
from torchdeq.utils.checks import OptionError, check_choice

__all__ = [
    "DEQINR",
    "EquilibriumCell",
    "ExplicitINR",
    "FixedPointCache",
    "FourierFeatures",
    "GaborFilter",
    "SineFilter",
    "count_parameters",
    "matched_depth",
]

ACTIVATIONS = {"relu": torch.relu, "sine": torch.sin}


def _positive(name: str, value: Any) -> None:
    if not value > 0:
        raise OptionError(f"{name} must be > 0, got {value!r}")


# ------------------------------------------------------------------------------------------------
# input filters: (B, in_features) coordinates in [-1, 1] -> (B, out_features)


class FourierFeatures(nn.Module):
    """Random Fourier features ``[sin(2 pi x B), cos(2 pi x B)]`` with ``B ~ N(0, scale^2)``.

    ``B`` is fixed (a buffer, saved with the weights). ``scale`` is in cycles per unit of the
    coordinates, which span 2 units: it sets the bandwidth the network can fit easily.

    Args:
        in_features (int): Coordinate dimension.
        n_features (int, optional): Number of frequencies; the output has twice as many
            features. Default 128.
        scale (float, optional): Standard deviation of the frequencies. Default 10.

    Example:
        >>> FourierFeatures(2, 16)(torch.zeros(5, 2)).shape
        torch.Size([5, 32])
    """

    def __init__(self, in_features: int, n_features: int = 128, scale: float = 10.0) -> None:
        super().__init__()
        _positive("scale", scale)
        self.out_features = 2 * n_features
        self.register_buffer("frequencies", torch.randn(in_features, n_features) * scale)

    def forward(self, x: Tensor) -> Tensor:
        phase = (2 * math.pi) * (x @ self.frequencies)
        return torch.cat([torch.sin(phase), torch.cos(phase)], dim=-1)


class SineFilter(nn.Module):
    """A learnt sine filter ``sin(2 pi x Omega + phi)``: SIREN's first layer, MFN's FourierNet.

    Args:
        in_features (int): Coordinate dimension.
        n_features (int, optional): Number of filters. Default 256.
        scale (float, optional): Frequencies start uniform in ``[-scale, scale]`` cycles per
            unit. Default 10.

    Example:
        >>> SineFilter(1, 8)(torch.zeros(3, 1)).shape
        torch.Size([3, 8])
    """

    def __init__(self, in_features: int, n_features: int = 256, scale: float = 10.0) -> None:
        super().__init__()
        _positive("scale", scale)
        self.out_features = n_features
        self.linear = nn.Linear(in_features, n_features)
        with torch.no_grad():
            self.linear.weight.uniform_(-scale, scale).mul_(2 * math.pi)
            self.linear.bias.uniform_(-math.pi, math.pi)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sin(self.linear(x))


class GaborFilter(SineFilter):
    """A learnt Gabor filter ``exp(-gamma/2 |x - mu|^2) sin(2 pi x Omega + phi)`` (MFN GaborNet).

    The envelope localises each sinusoid around a centre ``mu`` with a width set by
    ``gamma ~ Gamma(alpha, beta)``; its frequencies scale with ``sqrt(gamma)`` as in the paper,
    so narrow windows carry high frequencies.

    Args:
        in_features (int): Coordinate dimension.
        n_features (int, optional): Number of filters. Default 256.
        scale (float, optional): Frequency scale in cycles per unit. Default 10.
        alpha (float, optional): Shape of the Gamma prior of ``gamma``. Default 6.
        beta (float, optional): Rate of the Gamma prior of ``gamma``. Default 1.

    Example:
        >>> GaborFilter(2, 8)(torch.zeros(3, 2)).shape
        torch.Size([3, 8])
    """

    def __init__(
        self,
        in_features: int,
        n_features: int = 256,
        scale: float = 10.0,
        alpha: float = 6.0,
        beta: float = 1.0,
    ) -> None:
        super().__init__(in_features, n_features, scale)
        _positive("alpha", alpha)
        _positive("beta", beta)
        gamma = torch.distributions.Gamma(alpha, beta).sample((n_features,))
        self.centres = nn.Parameter(torch.rand(n_features, in_features) * 2 - 1)
        self.gamma = nn.Parameter(gamma)
        with torch.no_grad():
            self.linear.weight.mul_(torch.sqrt(gamma / gamma.mean())[:, None])

    def forward(self, x: Tensor) -> Tensor:
        dist2 = (x[:, None, :] - self.centres).pow(2).sum(-1)
        # A window width must stay positive however the optimiser moves it.
        gamma = self.gamma.clamp_min(0.0)
        return torch.exp(-0.5 * gamma * dist2) * torch.sin(self.linear(x))


# ------------------------------------------------------------------------------------------------
# the implicit layer and its per-coordinate warm start


class EquilibriumCell(nn.Module):
    """The layer ``f(z, u) = act(W z + u)`` whose fixed point is the representation.

    ``W`` starts with spectral norm about ``weight_scale`` (Gaussian entries of standard
    deviation ``weight_scale / (2 sqrt(width))``), so that ``f`` starts as a contraction and
    fixed-point iteration converges from the first step.

    Args:
        width (int): Width of the state ``z``.
        activation (str, optional): ``'relu'`` or ``'sine'`` (SIREN-like). Default ``'relu'``.
        weight_scale (float, optional): Initial spectral norm of ``W``. Default 0.5.

    Example:
        >>> cell = EquilibriumCell(4)
        >>> cell(torch.zeros(2, 4), torch.ones(2, 4)).shape
        torch.Size([2, 4])
    """

    def __init__(self, width: int, activation: str = "relu", weight_scale: float = 0.5) -> None:
        super().__init__()
        self.act = ACTIVATIONS[check_choice("activation", activation, ACTIVATIONS)]
        self.linear = nn.Linear(width, width, bias=False)
        with torch.no_grad():
            self.linear.weight.normal_(0.0, weight_scale / (2.0 * math.sqrt(width)))

    def forward(self, z: Tensor, u: Tensor) -> Tensor:
        return self.act(self.linear(z) + u)


class FixedPointCache(nn.Module):
    """The last state of every coordinate, and its relative residual, to start the next solve.

    Rows grow on demand to the largest index seen; a row never written holds a zero state and an
    infinite residual. The tables are non-persistent buffers: they follow the module across
    devices but stay out of checkpoints (they are rebuilt within an epoch, and the states would
    dwarf the weights).

    Args:
        width (int): Width of a state.

    Example:
        >>> cache = FixedPointCache(3)
        >>> cache.write(torch.tensor([4]), torch.ones(1, 3), torch.tensor([0.5]))
        >>> cache.read(torch.tensor([4, 0])).tolist(), cache.residual(torch.tensor([4, 0])).tolist()
        ([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]], [0.5, inf])
    """

    def __init__(self, width: int) -> None:
        super().__init__()
        self.register_buffer("states", torch.zeros(0, width), persistent=False)
        self.register_buffer("residuals", torch.zeros(0), persistent=False)

    def __len__(self) -> int:
        return self.states.shape[0]

    def _grow(self, index: Tensor) -> None:
        need = int(index.max()) + 1 if index.numel() else 0
        if need > len(self):
            extra = need - len(self)
            self.states = torch.cat(
                [self.states, self.states.new_zeros(extra, self.states.shape[1])]
            )
            inf = self.residuals.new_full((extra,), float("inf"))
            self.residuals = torch.cat([self.residuals, inf])

    def read(self, index: Tensor) -> Tensor:
        """States ``(B, width)`` of the coordinates ``index`` ``(B,)``."""
        self._grow(index)
        return self.states[index]

    def residual(self, index: Tensor) -> Tensor:
        """Relative residuals ``(B,)`` last recorded for ``index`` (inf: never written)."""
        self._grow(index)
        return self.residuals[index]

    def write(self, index: Tensor, z: Tensor, residual: Tensor) -> None:
        """Stores states ``z`` ``(B, width)`` and their residuals ``(B,)`` (both detached)."""
        self._grow(index)
        self.states[index] = z.detach().to(self.states.dtype)
        self.residuals[index] = residual.detach().to(self.residuals.dtype)

    def clear(self) -> None:
        """Forgets every state (the next solves start from zero)."""
        self.states.zero_()
        self.residuals.fill_(float("inf"))


# ------------------------------------------------------------------------------------------------
# the two networks


class DEQINR(nn.Module):
    """An implicit representation whose one hidden layer is solved to equilibrium.

    Args:
        filter (nn.Module): The input filter; must have an ``out_features`` attribute.
        out_features (int): Channels of the signal.
        width (int, optional): Width of the equilibrium state. Default 400.
        activation (str, optional): The cell's activation, ``'relu'`` or ``'sine'``.
            Default ``'relu'``.
        weight_scale (float, optional): Initial spectral norm of the cell's ``W``. Default 0.5.
        deq (Mapping, optional): Options of :func:`torchdeq.get_deq` (the ``deq`` node).
        norm (Mapping, optional): Options of :func:`torchdeq.apply_norm` for the cell (the
            ``norm`` node); None leaves it unnormalised.
        reuse (bool, optional): Start each solve from the coordinate's last state (needs the
            batch's ``index``). Default True.
        skip_tol (float, optional): In training, skip the solver (``max_iter`` 0: only the
            gradient steps run, from the cached states) when the mean relative residual last
            recorded for the batch's coordinates is below ``skip_tol``. None always solves.
            Default None.

    Example:
        >>> net = DEQINR(FourierFeatures(2, 8), 1, width=16, deq={"f_max_iter": 10})
        >>> preds, info = net(torch.rand(5, 2) * 2 - 1, index=torch.arange(5))
        >>> preds[-1].shape, info["nstep"].shape
        (torch.Size([5, 1]), torch.Size([5]))
    """

    def __init__(
        self,
        filter: nn.Module,
        out_features: int,
        width: int = 400,
        activation: Literal["relu", "sine"] = "relu",
        weight_scale: float = 0.5,
        deq: Mapping[str, Any] | None = None,
        norm: Mapping[str, Any] | None = None,
        reuse: bool = True,
        skip_tol: float | None = None,
    ) -> None:
        super().__init__()
        if skip_tol is not None and not skip_tol > 0:
            raise OptionError(f"skip_tol must be > 0 or None, got {skip_tol!r}")
        self.filter = filter
        self.inject = nn.Linear(filter.out_features, width)
        self.cell = EquilibriumCell(width, activation, weight_scale)
        self.readout = nn.Linear(width, out_features)
        if norm is not None:
            apply_norm(self.cell, args=norm)
        self.deq = get_deq(deq)
        self.reuse = reuse
        self.skip_tol = skip_tol
        self.cache = FixedPointCache(width)

    def forward(
        self,
        coords: Tensor,
        index: Tensor | None = None,
        sradius_mode: bool = False,
        jac_loss: bool = False,
    ) -> tuple[list[Tensor], Mapping[str, Tensor]]:
        """Predicts the signal at ``coords``.

        Args:
            coords (Tensor): ``(B, in_features)`` coordinates.
            index (Tensor, optional): ``(B,)`` rows of the coordinates in the data's table; the
                key of the fixed-point cache. None solves from zero and caches nothing.
            sradius_mode (bool, optional): Estimate the spectral radius at the fixed point
                (evaluation only). Default False.
            jac_loss (bool, optional): Put the Jacobian regulariser at the fixed point into the
                info dict as ``'jac_loss'``. Default False.

        Returns:
            tuple[list[Tensor], Mapping[str, Tensor]]: ``(B, out_features)`` predictions, one
            per state the DEQ returns (one unless ``n_states > 1`` in training), and the DEQ's
            info dict.
        """
        u = self.inject(self.filter(coords))
        cached = self.reuse and index is not None
        z0 = self.cache.read(index).to(u.dtype) if cached else u.new_zeros(u.shape)
        skip = cached and self._fresh(index)

        def f(z: Tensor) -> Tensor:
            return self.cell(z, u)

        states, info = self.deq(
            f, z0, solver_kwargs={"max_iter": 0} if skip else None, sradius_mode=sradius_mode
        )
        z_last = states[-1].detach()
        if skip:
            info = self._measured(info, z0, z_last)
        if cached:
            residual = info.get("rel_lowest")
            if residual is None or residual.shape != index.shape:
                # A solver without statistics: record how far the gradient steps moved.
                residual = self._measured(info, z0, z_last)["rel_lowest"]
            self.cache.write(index, z_last, residual)
        if jac_loss:
            info = {**info, "jac_loss": jac_loss_at(f, states[-1])}
        return [self.readout(z) for z in states], info

    def _fresh(self, index: Tensor) -> bool:
        """Whether the cached states of ``index`` are close enough to skip the solver."""
        if not self.training or self.skip_tol is None:
            return False
        return bool(self.cache.residual(index).mean() < self.skip_tol)

    @staticmethod
    def _measured(info: Mapping[str, Tensor], z0: Tensor, z1: Tensor) -> dict[str, Tensor]:
        """Residuals of ``z0`` measured by the gradient step ``z1`` (no solver step ran).

        With the one-step gradient ``z1 = f(z0)``, so this is ``z0``'s residual exactly; with
        damped or several phantom steps it is the distance those steps moved the state.
        """
        moved = torch.linalg.vector_norm((z1 - z0).flatten(1), dim=1)
        norm = torch.linalg.vector_norm(z1.flatten(1), dim=1)
        return {**info, "abs_lowest": moved, "rel_lowest": moved / (norm + 1e-8)}


class ExplicitINR(nn.Module):
    """The baseline: the filter, then ``1 + depth`` ordinary layers, then a linear readout.

    Args:
        filter (nn.Module): The input filter; must have an ``out_features`` attribute.
        out_features (int): Channels of the signal.
        width (int, optional): Width of every hidden layer. Default 256.
        depth (int, optional): Hidden ``width x width`` layers after the first. None chooses
            it with :func:`matched_depth` so that the net has as many parameters as a
            :class:`DEQINR` of width ``match_width`` on the same filter. Default None.
        activation (str, optional): ``'relu'`` or ``'sine'``. Default ``'relu'``.
        match_width (int, optional): The DEQ width to match when ``depth`` is None.
            Default 400.

    Example:
        >>> net = ExplicitINR(FourierFeatures(2, 8), 1, width=8, depth=2)
        >>> preds, info = net(torch.zeros(3, 2))
        >>> preds[0].shape, info is None
        (torch.Size([3, 1]), True)
    """

    def __init__(
        self,
        filter: nn.Module,
        out_features: int,
        width: int = 256,
        depth: int | None = None,
        activation: Literal["relu", "sine"] = "relu",
        match_width: int = 400,
    ) -> None:
        super().__init__()
        self.act = ACTIVATIONS[check_choice("activation", activation, ACTIVATIONS)]
        features = filter.out_features
        if depth is None:
            depth = matched_depth(features, out_features, width, match_width)
        if int(depth) < 0:
            raise OptionError(f"depth must be >= 0 or None, got {depth!r}")
        self.filter = filter
        self.layers = nn.ModuleList(
            nn.Linear(features if i == 0 else width, width) for i in range(int(depth) + 1)
        )
        self.readout = nn.Linear(width, out_features)

    def forward(
        self,
        coords: Tensor,
        index: Tensor | None = None,
        sradius_mode: bool = False,
        jac_loss: bool = False,
    ) -> tuple[list[Tensor], None]:
        """Predicts the signal at ``coords`` (``index`` and ``sradius_mode`` are not used).

        Raises:
            ValueError: For ``jac_loss=True``: an explicit net has no equilibrium.
        """
        if jac_loss:
            raise ValueError(
                "ExplicitINR has no equilibrium whose Jacobian could be regularised; "
                "set loss.jac_loss_weight=0 loss.jac_loss_freq=0"
            )
        h = self.filter(coords)
        for layer in self.layers:
            h = self.act(layer(h))
        return [self.readout(h)], None


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def matched_depth(features: int, out_features: int, width: int, deq_width: int) -> int:
    """The depth of an :class:`ExplicitINR` whose size is closest to a :class:`DEQINR`'s.

    Counts the weights and biases of everything after the filter (which both nets share):
    ``features * W + W + W^2 + W * out + out`` for the DEQ of width ``W`` (without the
    weight-norm scales) against ``(features + 1) w + depth (w^2 + w) + w * out + out``.

    Args:
        features (int): Output features of the filter.
        out_features (int): Channels of the signal.
        width (int): Width ``w`` of the explicit layers.
        deq_width (int): Width ``W`` of the DEQ.

    Returns:
        int: The depth (hidden ``w x w`` layers after the first), at least 0.

    Example:
        >>> matched_depth(256, 1, 256, 400)   # 263,201 vs 263,425 parameters
        3
    """
    deq = features * deq_width + deq_width + deq_width**2 + deq_width * out_features + out_features
    first = (features + 1) * width + width * out_features + out_features
    return max(0, round((deq - first) / (width * width + width)))
