"""Building blocks of the multiscale equilibrium cell: residual blocks and resampling paths.

Every block keeps the (B, C, H, W) layout. Branch ``i`` of a multiscale state has ``channels[i]``
channels at the resolution ``ceil(H / 2**i)``: stride-2 3x3 convolutions (padding 1) map a
branch onto the next coarser one, and nearest-neighbour interpolation onto a finer one.

References:
    Bai, Koltun, Kolter. Multiscale Deep Equilibrium Models. NeurIPS 2020, arXiv:2006.08656.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch  # noqa: F401  (the examples use it)
import torch.nn.functional as F
from torch import Tensor, nn

from torchdeq.dropout import VariationalDropout2d

__all__ = [
    "Downsample",
    "MultiscaleFusion",
    "ResidualBlock",
    "Upsample",
    "conv3x3",
    "group_norm",
]


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """A 3x3 convolution without bias (a group norm follows it everywhere)."""
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def group_norm(channels: int, num_groups: int) -> nn.GroupNorm:
    """Group norm with ``num_groups`` groups, or fewer when ``channels`` is not divisible.

    Args:
        channels (int): Number of channels.
        num_groups (int): Preferred number of groups.

    Returns:
        nn.GroupNorm: With the largest divisor of ``channels`` that is at most ``num_groups``.

    Example:
        >>> group_norm(6, 4).num_groups
        3
    """
    groups = max(g for g in range(1, min(num_groups, channels) + 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


class ResidualBlock(nn.Module):
    """The per-branch transformation of MDEQ: a residual block with the injection added inside.

    ``out = GN(relu(GN(conv(drop(relu(GN(conv(z)))))) + x + z))``, where ``x`` is the branch's
    input injection and ``drop`` a variational dropout whose mask stays fixed across solver
    steps (reset per batch by :func:`torchdeq.dropout.reset_dropout`). The final group norm
    keeps the state's scale fixed, which the solver needs.

    Args:
        channels (int): Channels of the branch.
        num_groups (int, optional): Group-norm groups. Default 4.
        dropout (float, optional): Variational dropout rate (0 disables it). Default 0.0.

    Shape:
        - z, x: (B, C, H, W).
        - Output: (B, C, H, W).

    Example:
        >>> block = ResidualBlock(8)
        >>> block(torch.zeros(2, 8, 5, 5), torch.randn(2, 8, 5, 5)).shape
        torch.Size([2, 8, 5, 5])
    """

    def __init__(self, channels: int, num_groups: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv1 = conv3x3(channels, channels)
        self.gn1 = group_norm(channels, num_groups)
        self.drop = VariationalDropout2d(dropout, token_first=False) if dropout > 0 else None
        self.conv2 = conv3x3(channels, channels)
        self.gn2 = group_norm(channels, num_groups)
        self.gn3 = group_norm(channels, num_groups)

    def forward(self, z: Tensor, x: Tensor) -> Tensor:
        y = F.relu(self.gn1(self.conv1(z)))
        if self.drop is not None:
            y = self.drop(y)
        y = self.gn2(self.conv2(y)) + x + z
        return self.gn3(F.relu(y))


class Downsample(nn.Sequential):
    """Maps a branch ``steps`` resolutions down: stride-2 3x3 convs with group norms.

    Intermediate steps keep ``in_channels`` and end in a ReLU; the last one maps to
    ``out_channels`` and ends in a group norm (the fusion sums before its ReLU).

    Args:
        in_channels (int): Channels of the source branch.
        out_channels (int): Channels of the target branch.
        steps (int): How many times to halve the resolution (>= 1).
        num_groups (int, optional): Group-norm groups. Default 4.

    Raises:
        ValueError: If ``steps < 1``.

    Example:
        >>> Downsample(8, 16, steps=2)(torch.zeros(2, 8, 7, 7)).shape
        torch.Size([2, 16, 2, 2])
    """

    def __init__(self, in_channels: int, out_channels: int, steps: int, num_groups: int = 4):
        if steps < 1:
            raise ValueError(f"Downsample needs steps >= 1, got {steps!r}")
        layers: list[nn.Module] = []
        for _ in range(steps - 1):
            layers += [conv3x3(in_channels, in_channels, 2), group_norm(in_channels, num_groups)]
            layers.append(nn.ReLU())
        layers += [conv3x3(in_channels, out_channels, 2), group_norm(out_channels, num_groups)]
        super().__init__(*layers)


class Upsample(nn.Module):
    """Maps a branch onto a finer one: 1x1 conv and group norm, then nearest interpolation.

    The convolution runs at the coarse resolution, where it is cheapest.

    Args:
        in_channels (int): Channels of the source (coarser) branch.
        out_channels (int): Channels of the target (finer) branch.
        num_groups (int, optional): Group-norm groups. Default 4.

    Example:
        >>> Upsample(16, 8)(torch.zeros(2, 16, 4, 4), size=(7, 7)).shape
        torch.Size([2, 8, 7, 7])
    """

    def __init__(self, in_channels: int, out_channels: int, num_groups: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.gn = group_norm(out_channels, num_groups)

    def forward(self, y: Tensor, size: Sequence[int]) -> Tensor:
        return F.interpolate(self.gn(self.conv(y)), size=tuple(size), mode="nearest")


class MultiscaleFusion(nn.Module):
    """Exchanges information between resolutions: every branch receives every other one.

    ``out_i = relu(y_i + sum_{j != i} resample_{j -> i}(y_j))``, with :class:`Downsample` from
    finer branches (j < i) and :class:`Upsample` from coarser ones (j > i).

    Args:
        channels (Sequence[int]): Channels of each branch, finest first.
        num_groups (int, optional): Group-norm groups. Default 4.

    Example:
        >>> fuse = MultiscaleFusion([8, 16])
        >>> [y.shape[1:] for y in fuse([torch.zeros(2, 8, 7, 7), torch.zeros(2, 16, 4, 4)])]
        [torch.Size([8, 7, 7]), torch.Size([16, 4, 4])]
    """

    def __init__(self, channels: Sequence[int], num_groups: int = 4) -> None:
        super().__init__()
        n = len(channels)
        # paths[i][j] carries branch j to branch i (None on the diagonal).
        self.paths = nn.ModuleList(
            nn.ModuleList(
                None
                if j == i
                else Downsample(channels[j], channels[i], i - j, num_groups)
                if j < i
                else Upsample(channels[j], channels[i], num_groups)
                for j in range(n)
            )
            for i in range(n)
        )

    def forward(self, ys: Sequence[Tensor]) -> list[Tensor]:
        out = []
        for i, paths in enumerate(self.paths):
            acc = ys[i]
            for j, path in enumerate(paths):
                if j < i:
                    acc = acc + path(ys[j])
                elif j > i:
                    acc = acc + path(ys[j], ys[i].shape[-2:])
            out.append(F.relu(acc))
        return out
