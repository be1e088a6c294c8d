"""The multiscale deep equilibrium model (MDEQ) for image classification.

Several resolutions are solved for jointly as one equilibrium: the DEQ state is a tuple with one
(B, C_i, H_i, W_i) tensor per branch, and the cell applies a residual block to every branch and
then fuses all resolutions. The input is encoded once, outside the equilibrium (a stem and one
injection per branch), and a classification head reads all branches of the fixed point.

::

    image -> Stem -> Injection -> (x_0, ..., x_{n-1})
    z* = MDEQCell(z*, x)            # solved by torchdeq (get_deq(deq)), state (z_0, ..., z_{n-1})
    logits = ClassificationHead(z*)

References:
    Bai, Koltun, Kolter. Multiscale Deep Equilibrium Models. NeurIPS 2020, arXiv:2006.08656.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deqzoo.loss import jac_loss_at
from projects.mdeq.layers import MultiscaleFusion, ResidualBlock, conv3x3, group_norm
from torchdeq import apply_norm, get_deq

__all__ = ["ClassificationHead", "Injection", "MDEQCell", "MDEQNet", "Stem"]


def _branch_sizes(height: int, width: int, n: int) -> list[tuple[int, int]]:
    # A stride-2 3x3 conv with padding 1 maps a side s to ceil(s / 2).
    sizes = [(height, width)]
    for _ in range(n - 1):
        h, w = sizes[-1]
        sizes.append((-(-h // 2), -(-w // 2)))
    return sizes


class Stem(nn.Sequential):
    """The explicit image encoder; each conv is followed by a group norm and a ReLU.

    It runs once per image, unlike the cell, which runs at every solver step, so a deeper stem
    is cheap next to a wider cell. With ``downsample = k > 0``:

    * ``full_res_channels = c > 0``: a stride-1 3x3 conv to ``c`` channels at the input
      resolution, then ``k`` stride-2 3x3 convs (the classic stem);
    * ``full_res_channels = 0``: the image is first rearranged into 2x2 patches (space to depth,
      lossless) and a 3x3 conv mixes them, which amounts to a 6x6 stride-2 conv of the image,
      then ``k - 1`` stride-2 3x3 convs follow. No full-resolution feature map is formed, which
      makes it several times cheaper on a CPU.

    With ``k = 0`` it is one stride-1 3x3 conv.

    Args:
        in_channels (int): Image channels.
        channels (int): Output channels.
        downsample (int, optional): Number of halvings of the resolution. Default 0.
        num_groups (int, optional): Group-norm groups. Default 4.
        full_res_channels (int, optional): Width of a first conv at the input resolution (0:
            none, space to depth instead). Default 0.

    Example:
        >>> Stem(1, 8, downsample=2)(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 8, 7, 7])
        >>> Stem(1, 8, downsample=2, full_res_channels=4)[0]
        Conv2d(1, 4, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), bias=False)
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        downsample: int = 0,
        num_groups: int = 4,
        full_res_channels: int = 0,
    ):
        layers: list[nn.Module] = []
        if downsample == 0:
            widths, strides = [channels], [1]
        elif full_res_channels > 0:
            widths, strides = [full_res_channels] + [channels] * downsample, [1] + [2] * downsample
        else:
            layers.append(nn.PixelUnshuffle(2))
            in_channels *= 4
            widths, strides = [channels] * downsample, [1] + [2] * (downsample - 1)
        for width, stride in zip(widths, strides):
            layers += [
                conv3x3(in_channels, width, stride),
                group_norm(width, num_groups),
                nn.ReLU(),
            ]
            in_channels = width
        super().__init__(*layers)

    def forward(self, x: Tensor) -> Tensor:
        if isinstance(self[0], nn.PixelUnshuffle) and (x.shape[-2] % 2 or x.shape[-1] % 2):
            # Space to depth needs even sides; a zero row/column keeps ceil(H / 2) like a
            # stride-2 conv would.
            x = F.pad(x, (0, x.shape[-1] % 2, 0, x.shape[-2] % 2))
        return super().forward(x)


class Injection(nn.Module):
    """The input injection of every branch, computed once before the solve.

    Branch 0 gets a 3x3 conv of the stem features; branch ``i > 0`` a stride-2 3x3 conv of the
    features average-pooled to the resolution of branch ``i - 1``. Each ends in a group norm, so
    the injection and the state enter the residual blocks at the same scale.

    Args:
        in_channels (int): Stem channels.
        channels (Sequence[int]): Channels of each branch, finest first.
        num_groups (int, optional): Group-norm groups. Default 4.

    Shape:
        - Input: (B, C_in, H, W).
        - Output: a list with one (B, channels[i], ceil(H / 2**i), ceil(W / 2**i)) per branch.

    Example:
        >>> [x.shape[1:] for x in Injection(8, [8, 16])(torch.zeros(2, 8, 7, 7))]
        [torch.Size([8, 7, 7]), torch.Size([16, 4, 4])]
    """

    def __init__(self, in_channels: int, channels: Sequence[int], num_groups: int = 4) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Sequential(conv3x3(in_channels, c, 1 if i == 0 else 2), group_norm(c, num_groups))
            for i, c in enumerate(channels)
        )

    def forward(self, h: Tensor) -> list[Tensor]:
        sizes = _branch_sizes(h.shape[-2], h.shape[-1], len(self.convs))
        xs = []
        for i, conv in enumerate(self.convs):
            source = h if i <= 1 else F.adaptive_avg_pool2d(h, sizes[i - 1])
            xs.append(conv(source))
        return xs


class MDEQCell(nn.Module):
    """The equilibrium function ``f(z, x)``: a residual block per branch, then fusion.

    Args:
        channels (Sequence[int]): Channels of each branch, finest first.
        num_groups (int, optional): Group-norm groups. Default 4.
        dropout (float, optional): Variational dropout rate of the blocks. Default 0.0.

    Example:
        >>> cell = MDEQCell([8, 16])
        >>> zs = [torch.zeros(2, 8, 7, 7), torch.zeros(2, 16, 4, 4)]
        >>> [z.shape for z in cell(zs, [torch.randn_like(z) for z in zs])] == [z.shape for z in zs]
        True
    """

    def __init__(self, channels: Sequence[int], num_groups: int = 4, dropout: float = 0.0):
        super().__init__()
        self.blocks = nn.ModuleList(ResidualBlock(c, num_groups, dropout) for c in channels)
        self.fusion = MultiscaleFusion(channels, num_groups)

    def forward(self, zs: Sequence[Tensor], xs: Sequence[Tensor]) -> list[Tensor]:
        return self.fusion([block(z, x) for block, z, x in zip(self.blocks, zs, xs)])


class ClassificationHead(nn.Module):
    """Reads all branches: incremental downsampling from the finest branch, pooling, linear.

    ``y = z_0``; for each coarser branch ``y = relu(GN(conv_s2(y))) + z_i``; then a 1x1 conv to
    ``head_channels``, group norm, ReLU, global average pooling and a linear classifier.

    Args:
        channels (Sequence[int]): Channels of each branch, finest first.
        num_classes (int): Number of classes.
        head_channels (int, optional): Width of the final 1x1 conv. Default 256.
        num_groups (int, optional): Group-norm groups. Default 4.

    Example:
        >>> head = ClassificationHead([8, 16], num_classes=10, head_channels=32)
        >>> head([torch.zeros(2, 8, 7, 7), torch.zeros(2, 16, 4, 4)]).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        channels: Sequence[int],
        num_classes: int,
        head_channels: int = 256,
        num_groups: int = 4,
    ) -> None:
        super().__init__()
        self.downs = nn.ModuleList(
            nn.Sequential(conv3x3(c_in, c_out, 2), group_norm(c_out, num_groups), nn.ReLU())
            for c_in, c_out in zip(channels[:-1], channels[1:])
        )
        self.final = nn.Sequential(
            nn.Conv2d(channels[-1], head_channels, 1, bias=False),
            group_norm(head_channels, num_groups),
            nn.ReLU(),
        )
        self.classifier = nn.Linear(head_channels, num_classes)

    def forward(self, zs: Sequence[Tensor]) -> Tensor:
        y = zs[0]
        for down, z in zip(self.downs, zs[1:]):
            y = down(y) + z
        return self.classifier(self.final(y).mean(dim=(-2, -1)))


class MDEQNet(nn.Module):
    """An MDEQ classifier: stem, injection, multiscale equilibrium and classification head.

    The DEQ is built by :func:`torchdeq.get_deq` from ``deq`` (solver, iterations, gradient),
    and the cell's convolutions are normalised by :func:`torchdeq.apply_norm` with ``norm``.

    Args:
        in_channels (int, optional): Image channels. Default 3.
        num_classes (int, optional): Number of classes. Default 10.
        channels (Sequence[int], optional): Channels of each resolution branch, finest first
            (the number of branches is its length). Default (32, 64).
        stem_channels (int, optional): Channels of the stem. Default 32.
        downsample (int, optional): Stride-2 convolutions in the stem (branch 0 works at
            ``H / 2**downsample``). Default 0.
        num_groups (int, optional): Group-norm groups. Default 4.
        head_channels (int, optional): Width of the head's last conv. Default 256.
        dropout (float, optional): Variational dropout rate inside the cell. Default 0.0.
        deq (Mapping | Any, optional): DEQ options for :func:`torchdeq.get_deq` (a DictConfig,
            dict, Namespace or :class:`~torchdeq.utils.config.DEQConfig`). Default None (the
            library defaults).
        norm (Mapping | Any, optional): Normalisation options for :func:`torchdeq.apply_norm`
            (``norm_type``, ...). Default None: weight normalisation.
        stem_full_res_channels (int, optional): Width of a first stem conv at the input
            resolution; 0 replaces it by space to depth (see :class:`Stem`). Default 0.

    Raises:
        ValueError: If ``channels`` is empty or ``downsample`` is negative.

    Shape:
        - Input: (B, in_channels, H, W).
        - Output: ``(logits, info)``: a list of (B, num_classes) logits, one per state the DEQ
          returns (one at evaluation; ``n_states`` or ``len(indexing)`` in training), and the
          solver statistics; with ``jac_loss=True`` also ``info['jac_loss']``, the Jacobian
          regulariser at the fixed point (:func:`deqzoo.loss.jac_loss_at`).

    Example:
        >>> net = MDEQNet(1, 10, channels=(8, 16), stem_channels=8, downsample=2,
        ...               head_channels=16, deq=dict(f_max_iter=4))
        >>> logits, info = net(torch.randn(2, 1, 28, 28))
        >>> logits[-1].shape, info['nstep'].shape
        (torch.Size([2, 10]), torch.Size([2]))

    References:
        Bai, Koltun, Kolter. Multiscale Deep Equilibrium Models. NeurIPS 2020, arXiv:2006.08656.
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        channels: Sequence[int] = (32, 64),
        stem_channels: int = 32,
        downsample: int = 0,
        num_groups: int = 4,
        head_channels: int = 256,
        dropout: float = 0.0,
        deq: Mapping | Any = None,
        norm: Mapping | Any = None,
        stem_full_res_channels: int = 0,
    ) -> None:
        super().__init__()
        channels = [int(c) for c in channels]
        if not channels:
            raise ValueError("channels must list at least one branch, got []")
        if downsample < 0:
            raise ValueError(f"downsample must be >= 0, got {downsample!r}")
        self.stem = Stem(in_channels, stem_channels, downsample, num_groups, stem_full_res_channels)
        self.injection = Injection(stem_channels, channels, num_groups)
        self.cell = MDEQCell(channels, num_groups, dropout)
        self.head = ClassificationHead(channels, num_classes, head_channels, num_groups)
        # Only the equilibrium cell is normalised: it is what must stay a stable fixed-point map.
        apply_norm(self.cell, args=norm)
        self.deq = get_deq(deq)

    def forward(
        self, x: Tensor, sradius_mode: bool = False, jac_loss: bool = False
    ) -> tuple[list[Tensor], Any]:
        xs = self.injection(self.stem(x))
        z_init = tuple(torch.zeros_like(x_i) for x_i in xs)

        def f(*zs: Tensor) -> list[Tensor]:
            return self.cell(zs, xs)

        states, info = self.deq(f, z_init, sradius_mode=sradius_mode)
        if jac_loss:
            # Over all branches at once: the cross-resolution blocks of J count too.
            info = {**info, "jac_loss": jac_loss_at(f, states[-1])}
        return [self.head(zs) for zs in states], info
