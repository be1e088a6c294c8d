"""DEQ-Flow: a RAFT-style update operator whose fixed point is the optical flow.

Two frames are encoded to 1/8 resolution by a feature encoder (shared weights, instance norm) and
the first also by a context encoder (batch norm). The all-pairs correlation of the features,
pooled to a pyramid, is looked up around the current flow estimate (radius ``r`` at every level);
a motion encoder mixes the lookup with the flow, and a convolutional GRU updates a hidden state
``h``, from which a head predicts a flow update. The equilibrium is the pair ``(h*, flow*)`` of

    h'    = GRU(h, [context, motion(corr(flow), flow)])
    flow' = flow + head(h')

solved by ``torchdeq.get_deq(deq)`` (a tuple state; default fixed-point iteration) and
upsampled to full resolution by RAFT's learned convex combination of 3x3 neighbours.

:class:`RAFTFlow` is the explicit baseline in the same code: the same operator unrolled ``K``
times with backprop through all of them (RAFT's sequence loss is in :func:`sequence_loss`).

References:
    Bai, Geng, Savani, Kolter. Deep Equilibrium Optical Flow Estimation. CVPR 2022,
    arXiv:2204.08442.
    Teed, Deng. RAFT: Recurrent All-Pairs Field Transforms for Optical Flow. ECCV 2020,
    arXiv:2003.12039.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deqzoo.loss import jac_loss_at
from torchdeq import apply_norm, get_deq, reset_norm
from torchdeq.utils.checks import OptionError, check_choice

__all__ = [
    "SIZES",
    "ConvGRU",
    "CorrPyramid",
    "DEQFlow",
    "Encoder",
    "FlowSize",
    "RAFTFlow",
    "SepConvGRU",
    "UpdateBlock",
    "convex_upsample",
    "coords_grid",
    "count_parameters",
    "flow_l1",
    "sequence_loss",
]

NORMS = ("instance", "batch", "group", "none")


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _norm_layer(kind: str, channels: int) -> nn.Module:
    check_choice("norm_fn", kind, NORMS)
    if kind == "instance":
        return nn.InstanceNorm2d(channels)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(max(channels // 8, 1), channels)
    return nn.Identity()


# ------------------------------------------------------------------------------------------------
# encoders


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with normalisation and a (strided) shortcut, as in RAFT."""

    def __init__(self, c_in: int, c_out: int, norm_fn: str, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, stride=stride)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.norm1 = _norm_layer(norm_fn, c_out)
        self.norm2 = _norm_layer(norm_fn, c_out)
        self.down = None
        if stride != 1 or c_in != c_out:
            self.down = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride), _norm_layer(norm_fn, c_out)
            )

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.norm1(self.conv1(x)))
        y = F.relu(self.norm2(self.conv2(y)))
        return F.relu((x if self.down is None else self.down(x)) + y)


class Encoder(nn.Module):
    """A residual encoder to 1/8 resolution: 7x7 stride-2 stem, three stages, 1x1 projection.

    Args:
        out_dim (int): Output channels.
        dims (Sequence[int]): Channels of the three stages (strides 1, 2, 2).
        norm_fn (str): ``'instance'`` (RAFT's feature encoder), ``'batch'`` (its context
            encoder), ``'group'`` or ``'none'``.
        blocks (int, optional): Residual blocks per stage (RAFT: 2). Default 2.

    Example:
        >>> Encoder(16, (8, 8, 16), 'instance')(torch.zeros(1, 3, 32, 40)).shape
        torch.Size([1, 16, 4, 5])
    """

    def __init__(self, out_dim: int, dims: Sequence[int], norm_fn: str, blocks: int = 2) -> None:
        super().__init__()
        if len(dims) != 3:
            raise OptionError(f"encoder dims must list 3 stage widths, got {list(dims)!r}")
        if blocks < 1:
            raise OptionError(f"encoder blocks must be >= 1, got {blocks}")
        d1 = dims[0]
        self.stem = nn.Sequential(
            nn.Conv2d(3, d1, 7, stride=2, padding=3), _norm_layer(norm_fn, d1), nn.ReLU()
        )
        layers = []
        for stage, (c_in, c_out) in enumerate(zip((d1, *dims[:2]), dims)):
            layers.append(ResidualBlock(c_in, c_out, norm_fn, stride=1 if stage == 0 else 2))
            layers += [ResidualBlock(c_out, c_out, norm_fn) for _ in range(blocks - 1)]
        self.layers = nn.Sequential(*layers)
        self.proj = nn.Conv2d(dims[2], out_dim, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.layers(self.stem(x)))


# ------------------------------------------------------------------------------------------------
# correlation


def coords_grid(batch: int, height: int, width: int, device=None, dtype=None) -> Tensor:
    """Pixel coordinates ``(B, 2, H, W)``, channel 0 = x (column), channel 1 = y (row)."""
    ys, xs = torch.meshgrid(
        torch.arange(height, device=device, dtype=dtype),
        torch.arange(width, device=device, dtype=dtype),
        indexing="ij",
    )
    return torch.stack([xs, ys]).unsqueeze(0).expand(batch, -1, -1, -1)


def bilinear_sample(image: Tensor, coords: Tensor) -> Tensor:
    """Samples ``image`` (N, C, H, W) at pixel coordinates ``coords`` (N, h, w, 2) (x, y).

    Outside the image the value is zero (RAFT's convention for the correlation lookup).
    """
    h, w = image.shape[-2:]
    x = 2 * coords[..., 0] / max(w - 1, 1) - 1
    y = 2 * coords[..., 1] / max(h - 1, 1) - 1
    return F.grid_sample(image, torch.stack([x, y], -1), align_corners=True)


class CorrPyramid:
    """All-pairs correlation of two feature maps, average-pooled to ``levels`` levels.

    ``corr[p, q] = <f1(p), f2(q)> / sqrt(C)`` for every pixel ``p`` of frame 1 and ``q`` of
    frame 2; level ``i`` pools the ``q`` dimensions by ``2**i``. :meth:`lookup` reads a
    ``(2r+1) x (2r+1)`` window around ``p + flow(p)`` (scaled by ``2**-i``) at every level,
    bilinearly, giving ``levels * (2r+1)**2`` channels.

    Args:
        fmap1 (Tensor): ``(B, C, H, W)`` features of frame 1.
        fmap2 (Tensor): ``(B, C, H, W)`` features of frame 2.
        levels (int): Pyramid levels.
        radius (int): Lookup radius ``r``.

    Example:
        >>> f = torch.randn(1, 8, 6, 7)
        >>> CorrPyramid(f, f, 2, 1).lookup(torch.zeros(1, 2, 6, 7)).shape
        torch.Size([1, 18, 6, 7])
    """

    def __init__(self, fmap1: Tensor, fmap2: Tensor, levels: int, radius: int) -> None:
        b, c, h, w = fmap1.shape
        corr = torch.einsum("bcp,bcq->bpq", fmap1.flatten(2), fmap2.flatten(2)) / c**0.5
        corr = corr.reshape(b * h * w, 1, h, w)
        self.shape = (b, h, w)
        self.radius = radius
        self.pyramid = [corr]
        self.scales = [1.0]
        for _ in range(levels - 1):
            # Pool only while a level keeps at least one pixel (small inputs in tests).
            if min(corr.shape[-2:]) >= 2:
                corr = F.avg_pool2d(corr, 2, stride=2)
                self.scales.append(self.scales[-1] / 2)
            else:
                self.scales.append(self.scales[-1])
            self.pyramid.append(corr)
        r = torch.arange(-radius, radius + 1, device=fmap1.device, dtype=fmap1.dtype)
        dy, dx = torch.meshgrid(r, r, indexing="ij")
        self.delta = torch.stack([dx, dy], -1).reshape(1, 2 * radius + 1, 2 * radius + 1, 2)

    @property
    def channels(self) -> int:
        return len(self.pyramid) * (2 * self.radius + 1) ** 2

    def lookup(self, flow: Tensor) -> Tensor:
        """Correlation windows around ``coords + flow``: ``(B, levels*(2r+1)^2, H, W)``."""
        b, h, w = self.shape
        coords = coords_grid(b, h, w, flow.device, flow.dtype) + flow
        centre = coords.permute(0, 2, 3, 1).reshape(b * h * w, 1, 1, 2)
        out = []
        for scale, corr in zip(self.scales, self.pyramid):
            window = centre * scale + self.delta.to(flow.dtype)
            out.append(bilinear_sample(corr, window).reshape(b, h, w, -1))
        return torch.cat(out, -1).permute(0, 3, 1, 2)


# ------------------------------------------------------------------------------------------------
# update operator


class MotionEncoder(nn.Module):
    """RAFT's motion encoder: convolutions of the correlation lookup and the flow, concatenated."""

    def __init__(self, corr_channels: int, dims: Sequence[int], out_dim: int) -> None:
        super().__init__()
        c1, c2, f1, f2 = dims
        self.convc1 = nn.Conv2d(corr_channels, c1, 1)
        self.convc2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.convf1 = nn.Conv2d(2, f1, 7, padding=3)
        self.convf2 = nn.Conv2d(f1, f2, 3, padding=1)
        self.conv = nn.Conv2d(c2 + f2, out_dim - 2, 3, padding=1)

    def forward(self, flow: Tensor, corr: Tensor) -> Tensor:
        c = F.relu(self.convc2(F.relu(self.convc1(corr))))
        f = F.relu(self.convf2(F.relu(self.convf1(flow))))
        return torch.cat([F.relu(self.conv(torch.cat([c, f], 1))), flow], 1)


class ConvGRU(nn.Module):
    """A convolutional GRU with ``k x k`` gates (Ballas et al., ICLR 2016)."""

    def __init__(self, hidden: int, inputs: int, kernel: int = 3) -> None:
        super().__init__()
        pad = kernel // 2
        self.convz = nn.Conv2d(hidden + inputs, hidden, kernel, padding=pad)
        self.convr = nn.Conv2d(hidden + inputs, hidden, kernel, padding=pad)
        self.convq = nn.Conv2d(hidden + inputs, hidden, kernel, padding=pad)

    def forward(self, h: Tensor, x: Tensor) -> Tensor:
        hx = torch.cat([h, x], 1)
        z = torch.sigmoid(self.convz(hx))
        r = torch.sigmoid(self.convr(hx))
        q = torch.tanh(self.convq(torch.cat([r * h, x], 1)))
        return (1 - z) * h + z * q


class SepConvGRU(nn.Module):
    """RAFT's separable GRU: a 1x5 GRU step followed by a 5x1 one."""

    def __init__(self, hidden: int, inputs: int) -> None:
        super().__init__()
        self.horizontal = _SepGRUStep(hidden, inputs, (1, 5))
        self.vertical = _SepGRUStep(hidden, inputs, (5, 1))

    def forward(self, h: Tensor, x: Tensor) -> Tensor:
        return self.vertical(self.horizontal(h, x), x)


class _SepGRUStep(ConvGRU):
    def __init__(self, hidden: int, inputs: int, kernel: tuple[int, int]) -> None:
        nn.Module.__init__(self)
        pad = (kernel[0] // 2, kernel[1] // 2)
        self.convz = nn.Conv2d(hidden + inputs, hidden, kernel, padding=pad)
        self.convr = nn.Conv2d(hidden + inputs, hidden, kernel, padding=pad)
        self.convq = nn.Conv2d(hidden + inputs, hidden, kernel, padding=pad)


GRUS = {"conv": ConvGRU, "sepconv": SepConvGRU}


class UpdateBlock(nn.Module):
    """One application of the update operator: ``(h, flow) -> (h', flow + head(h'))``.

    Args:
        corr_channels (int): Channels of the correlation lookup.
        hidden (int): GRU hidden channels.
        context (int): Context feature channels.
        motion_dims (Sequence[int]): Motion encoder widths ``(corr1, corr2, flow1, flow2)``.
        motion_out (int): Motion feature channels (including the 2 flow channels).
        head_dim (int): Hidden width of the flow head.
        gru (str): ``'conv'`` or ``'sepconv'``.
    """

    def __init__(
        self,
        corr_channels: int,
        hidden: int,
        context: int,
        motion_dims: Sequence[int],
        motion_out: int,
        head_dim: int,
        gru: str = "conv",
    ) -> None:
        super().__init__()
        self.motion = MotionEncoder(corr_channels, motion_dims, motion_out)
        self.gru = GRUS[check_choice("gru", gru, GRUS)](hidden, context + motion_out)
        self.head = nn.Sequential(
            nn.Conv2d(hidden, head_dim, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(head_dim, 2, 3, padding=1),
        )

    def forward(self, h: Tensor, flow: Tensor, context: Tensor, corr: CorrPyramid):
        motion = self.motion(flow, corr.lookup(flow))
        h = self.gru(h, torch.cat([context, motion], 1))
        return h, flow + self.head(h)


def convex_upsample(flow: Tensor, mask: Tensor, factor: int = 8) -> Tensor:
    """RAFT's learned upsampling: each fine pixel is a convex combination of 3x3 coarse flows.

    Args:
        flow (Tensor): ``(B, 2, H, W)`` flow in coarse pixels.
        mask (Tensor): ``(B, 9 * factor**2, H, W)`` logits of the combination weights.
        factor (int, optional): Upsampling factor. Default 8.

    Returns:
        Tensor: ``(B, 2, factor*H, factor*W)`` flow in fine pixels (multiplied by ``factor``).

    Example:
        >>> flow = torch.ones(1, 2, 3, 4)
        >>> convex_upsample(flow, torch.randn(1, 576, 3, 4)).shape
        torch.Size([1, 2, 24, 32])
    """
    b, _, h, w = flow.shape
    weights = torch.softmax(mask.view(b, 1, 9, factor, factor, h, w), dim=2)
    # Replicate padding: a constant flow stays exactly constant at the borders.
    patches = F.unfold(F.pad(factor * flow, (1, 1, 1, 1), mode="replicate"), 3)
    patches = patches.view(b, 2, 9, 1, 1, h, w)
    up = (weights * patches).sum(2)  # (B, 2, f, f, H, W)
    return up.permute(0, 1, 4, 2, 5, 3).reshape(b, 2, factor * h, factor * w)


class MaskHead(nn.Module):
    """Predicts the convex-upsampling logits from the hidden state (scaled by 0.25 as in RAFT)."""

    def __init__(self, hidden: int, dim: int, factor: int = 8) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(hidden, dim, 3, padding=1), nn.ReLU(), nn.Conv2d(dim, 9 * factor**2, 1)
        )

    def forward(self, h: Tensor) -> Tensor:
        return 0.25 * self.net(h)


# ------------------------------------------------------------------------------------------------
# sizes


class FlowSize(dict):
    """Widths of one model size (a dict of :class:`_FlowCore` keyword arguments)."""


SIZES: dict[str, FlowSize] = {
    # Sized for a CPU: about 0.9M parameters, one residual block per encoder stage.
    "small": FlowSize(
        feature_dim=96,
        encoder_dims=(24, 48, 64),
        encoder_blocks=1,
        hidden=64,
        context=64,
        motion_dims=(96, 64, 64, 32),
        motion_out=64,
        head_dim=96,
        mask_dim=96,
        corr_levels=3,
        corr_radius=3,
        gru="conv",
    ),
    # RAFT's size (DEQ-Flow-B): about 5.3M parameters.
    "B": FlowSize(
        feature_dim=256,
        encoder_dims=(64, 96, 128),
        encoder_blocks=2,
        hidden=128,
        context=128,
        motion_dims=(256, 192, 128, 64),
        motion_out=128,
        head_dim=256,
        mask_dim=256,
        corr_levels=4,
        corr_radius=4,
        gru="sepconv",
    ),
    # DEQ-Flow-H: wider encoders and update operator, about 13M parameters.
    "H": FlowSize(
        feature_dim=320,
        encoder_dims=(96, 144, 224),
        encoder_blocks=2,
        hidden=192,
        context=192,
        motion_dims=(384, 256, 192, 96),
        motion_out=192,
        head_dim=384,
        mask_dim=384,
        corr_levels=4,
        corr_radius=4,
        gru="sepconv",
    ),
}


def _size(size: str, overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    widths = dict(SIZES[check_choice("size", size, SIZES)])
    for key, value in (overrides or {}).items():
        if key not in widths:
            raise OptionError(f"unknown size key {key!r}; valid keys: {sorted(widths)}")
        widths[key] = value
    return widths


class _FlowCore(nn.Module):
    """What DEQ-Flow and its explicit baseline share: encoders, correlation, operator, upsampler."""

    def __init__(
        self,
        size: str = "small",
        widths: Mapping[str, Any] | None = None,
        context_norm: str = "batch",
        feature_norm: str = "instance",
        norm: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        w = _size(size, widths)
        self.widths = w
        blocks = w["encoder_blocks"]
        self.fnet = Encoder(w["feature_dim"], w["encoder_dims"], feature_norm, blocks)
        self.cnet = Encoder(w["hidden"] + w["context"], w["encoder_dims"], context_norm, blocks)
        corr_channels = w["corr_levels"] * (2 * w["corr_radius"] + 1) ** 2
        self.update = UpdateBlock(
            corr_channels,
            w["hidden"],
            w["context"],
            w["motion_dims"],
            w["motion_out"],
            w["head_dim"],
            w["gru"],
        )
        self.mask = MaskHead(w["hidden"], w["mask_dim"])
        self.normed = norm is not None and norm.get("norm_type", "none") != "none"
        if norm is not None:
            # Normalising the update operator's weights keeps its Lipschitz constant in check.
            apply_norm(self.update, args=norm)

    def prepare(self, image1: Tensor, image2: Tensor):
        """Encodes a pair of ``(B, 3, H, W)`` images in [0, 1] (H, W multiples of 8).

        Returns:
            tuple: the correlation pyramid, the initial hidden state and the context features.
        """
        if image1.shape != image2.shape or image1.dim() != 4 or image1.shape[1] != 3:
            raise ValueError(
                f"expected two (B, 3, H, W) images of one shape, got {tuple(image1.shape)} "
                f"and {tuple(image2.shape)}"
            )
        if image1.shape[-2] % 8 or image1.shape[-1] % 8:
            raise ValueError(f"image height and width must be multiples of 8, got {image1.shape}")
        if self.normed:
            reset_norm(self.update)
        x = torch.cat([image1, image2], 0) * 2 - 1
        fmap1, fmap2 = self.fnet(x).float().chunk(2, 0)
        corr = CorrPyramid(fmap1, fmap2, self.widths["corr_levels"], self.widths["corr_radius"])
        h0, context = torch.split(
            self.cnet(image1 * 2 - 1), [self.widths["hidden"], self.widths["context"]], 1
        )
        return corr, torch.tanh(h0), F.relu(context)

    def upsample(self, h: Tensor, flow: Tensor) -> Tensor:
        return convex_upsample(flow, self.mask(h))

    @staticmethod
    def initial_flow(h0: Tensor, flow_init: Tensor | None) -> Tensor:
        b, _, h, w = h0.shape
        if flow_init is None:
            return h0.new_zeros(b, 2, h, w)
        if flow_init.shape != (b, 2, h, w):
            raise ValueError(
                f"flow_init must be a (B, 2, H/8, W/8) = {(b, 2, h, w)} flow in 1/8-resolution "
                f"pixels, got {tuple(flow_init.shape)}"
            )
        return flow_init


class DEQFlow(_FlowCore):
    """DEQ-Flow: the flow is the fixed point of the update operator (Bai et al., CVPR 2022).

    Args:
        size (str, optional): ``'small'`` (CPU), ``'B'`` (about 5.3M) or ``'H'`` (about 13M).
            Default ``'small'``.
        widths (Mapping, optional): Overrides of the size's widths (keys of :data:`SIZES`).
        context_norm (str, optional): Context encoder normalisation. Default ``'batch'``.
        feature_norm (str, optional): Feature encoder normalisation. Default ``'instance'``.
        deq (Mapping, optional): Options of :func:`torchdeq.get_deq` (the ``deq`` node).
        norm (Mapping, optional): Options of :func:`torchdeq.apply_norm` for the update
            operator (the ``norm`` node); None leaves it unnormalised.

    Example:
        >>> net = DEQFlow(deq={'f_max_iter': 4}).eval()
        >>> flows, info = net(torch.rand(1, 3, 32, 48), torch.rand(1, 3, 32, 48))
        >>> flows[-1].shape
        torch.Size([1, 2, 32, 48])
    """

    def __init__(
        self,
        size: str = "small",
        widths: Mapping[str, Any] | None = None,
        context_norm: str = "batch",
        feature_norm: str = "instance",
        deq: Mapping[str, Any] | None = None,
        norm: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(size, widths, context_norm, feature_norm, norm)
        self.deq = get_deq(deq)

    def forward(
        self,
        image1: Tensor,
        image2: Tensor,
        flow_init: Tensor | None = None,
        sradius_mode: bool = False,
        jac_loss: bool = False,
        solver_kwargs: Mapping[str, Any] | None = None,
    ):
        """Solves for the flow from ``image1`` to ``image2``.

        Args:
            image1 (Tensor): ``(B, 3, H, W)`` first frame in [0, 1].
            image2 (Tensor): ``(B, 3, H, W)`` second frame.
            flow_init (Tensor, optional): ``(B, 2, H/8, W/8)`` warm start in 1/8-resolution
                pixels (e.g. the previous pair's ``info['flow_low']``). Default zero.
            sradius_mode (bool, optional): Estimate the spectral radius (evaluation).
            jac_loss (bool, optional): Put a Jacobian regulariser of the equilibrium into
                ``info['jac_loss']``.
            solver_kwargs (Mapping, optional): Per-call solver options (e.g. ``max_iter``).

        Returns:
            tuple[list[Tensor], dict]: ``(B, 2, H, W)`` full-resolution flows, one per state
            the DEQ returns, and the DEQ's info dict with ``flow_low`` (the 1/8 flow of the
            last state, detached) added.
        """
        corr, h0, context = self.prepare(image1, image2)
        flow0 = self.initial_flow(h0, flow_init)

        def f(h, flow):
            return self.update(h, flow, context, corr)

        states, info = self.deq(
            f,
            (h0, flow0),
            solver_kwargs=dict(solver_kwargs or {}) or None,
            sradius_mode=sradius_mode,
        )
        info = dict(info)
        flows = [self.upsample(h, flow) for h, flow in states]
        info["flow_low"] = states[-1][1].detach()
        if jac_loss:
            info["jac_loss"] = jac_loss_at(f, states[-1])
        return flows, info


class RAFTFlow(_FlowCore):
    """The explicit baseline: the same operator unrolled ``iters`` times (RAFT, ECCV 2020).

    Gradients flow through all iterations; the net returns every iterate's upsampled flow for
    RAFT's sequence loss (:func:`sequence_loss`).

    Args:
        iters (int, optional): Unrolled iterations in training. Default 12.
        eval_iters (int, optional): Iterations at evaluation (0: ``iters``). Default 0.
        size, widths, context_norm, feature_norm, norm: As in :class:`DEQFlow`.

    Example:
        >>> net = RAFTFlow(iters=3)
        >>> flows, info = net(torch.rand(1, 3, 32, 48), torch.rand(1, 3, 32, 48))
        >>> len(flows), info
        (3, None)
    """

    def __init__(
        self,
        iters: int = 12,
        eval_iters: int = 0,
        size: str = "small",
        widths: Mapping[str, Any] | None = None,
        context_norm: str = "batch",
        feature_norm: str = "instance",
        norm: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(size, widths, context_norm, feature_norm, norm)
        if iters < 1 or eval_iters < 0:
            raise OptionError(f"iters must be >= 1 and eval_iters >= 0, got {iters}, {eval_iters}")
        self.iters = iters
        self.eval_iters = eval_iters

    def forward(
        self,
        image1: Tensor,
        image2: Tensor,
        flow_init: Tensor | None = None,
        sradius_mode: bool = False,
        jac_loss: bool = False,
        iters: int | None = None,
    ):
        """Runs ``iters`` updates; returns every iterate's full-resolution flow and None."""
        if sradius_mode or jac_loss:
            raise OptionError(
                "RAFTFlow has no equilibrium: sradius_mode and jac_loss need DEQFlow "
                "(set loss.jac_loss_weight=0 loss.jac_loss_freq=0 and drop the sradius callback)"
            )
        corr, h, context = self.prepare(image1, image2)
        flow = self.initial_flow(h, flow_init)
        if iters is None:
            iters = self.iters if self.training or not self.eval_iters else self.eval_iters
        flows = []
        for _ in range(iters):
            # As in RAFT, the flow is detached between iterations: gradients of later iterates
            # reach earlier ones through the hidden state only.
            h, flow = self.update(h, flow.detach(), context, corr)
            if self.training:
                flows.append(self.upsample(h, flow))
        if not self.training:
            flows = [self.upsample(h, flow)]
        return flows, None


def sequence_loss(
    flows: Sequence[Tensor], target: Tensor, valid: Tensor, gamma: float = 0.8
) -> Tensor:
    """RAFT's sequence loss: ``sum_i gamma**(n-1-i) |flow_i - target|_1`` over valid pixels.

    Args:
        flows (Sequence[Tensor]): ``(B, 2, H, W)`` predictions, earliest first.
        target (Tensor): ``(B, 2, H, W)`` ground truth.
        valid (Tensor): ``(B, H, W)`` mask of pixels with ground truth.
        gamma (float, optional): Decay of earlier iterates' weights. Default 0.8.

    Example:
        >>> t = torch.zeros(1, 2, 2, 2)
        >>> round(float(sequence_loss([t + 1, t], t, torch.ones(1, 2, 2))), 6)
        1.6
    """
    n = len(flows)
    return sum(gamma ** (n - 1 - i) * flow_l1(flow, target, valid) for i, flow in enumerate(flows))


def flow_l1(flow: Tensor, target: Tensor, valid: Tensor) -> Tensor:
    """Mean over valid pixels of ``|du| + |dv|`` (RAFT's per-iterate loss)."""
    err = (flow - target).abs().sum(1)
    mask = valid.to(err.dtype)
    return (err * mask).sum() / mask.sum().clamp_min(1.0)
