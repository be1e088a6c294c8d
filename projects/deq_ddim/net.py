"""A small UNet that predicts the noise of a diffused image, and the DDPM noise schedule.

The UNet follows Ho, Jain, Abbeel, "Denoising Diffusion Probabilistic Models", NeurIPS 2020
(arXiv 2006.11239) at toy scale: a sinusoidal time embedding fed to every residual block,
residual blocks with group norm, one resolution halving per level and optional self-attention
at the lowest resolution.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["NoiseNet", "NoiseSchedule", "UNet", "timestep_embedding"]


class NoiseSchedule(nn.Module):
    """The DDPM forward process ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``.

    Buffers ``betas`` and ``alphas_cumprod`` (``abar_t``), indexed by ``t = 0 .. steps - 1``
    (``t = 0`` is the least noisy step). ``'linear'`` is Ho et al.'s (beta from 1e-4 to 0.02),
    ``'cosine'`` Nichol and Dhariwal's (ICML 2021, arXiv 2102.09672; betas capped at 0.999).

    Args:
        steps (int): Number of diffusion steps. Default 1000.
        kind (str): ``'linear'`` or ``'cosine'``. Default ``'linear'``.

    Example:
        >>> s = NoiseSchedule(1000, "linear")
        >>> round(float(s.alphas_cumprod[-1]), 6)
        4e-05
    """

    KINDS = ("linear", "cosine")

    def __init__(self, steps: int = 1000, kind: Literal["linear", "cosine"] = "linear"):
        super().__init__()
        if kind not in self.KINDS:
            raise ValueError(f"unknown schedule kind {kind!r}; valid choices: {self.KINDS}")
        if steps < 2:
            raise ValueError(f"steps must be at least 2, got {steps}")
        if kind == "linear":
            betas = torch.linspace(1e-4, 0.02, steps, dtype=torch.float64)
        else:
            s = 0.008
            u = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
            f = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2
            betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
        self.steps = steps
        self.kind = kind
        # float64 buffers: the coefficients of long chains are products of many factors
        self.register_buffer("betas", betas, persistent=False)
        self.register_buffer("alphas_cumprod", torch.cumprod(1 - betas, 0), persistent=False)

    def diffuse(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """``x_t`` for clean images ``x0`` (B, C, H, W), steps ``t`` (B,) and ``noise``."""
        abar = self.alphas_cumprod[t].to(x0.dtype).view(-1, *([1] * (x0.dim() - 1)))
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of (fractional) timesteps ``t`` (N,) as (N, dim).

    Example:
        >>> timestep_embedding(torch.tensor([0, 5]), 8).shape
        torch.Size([2, 8])
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    return F.pad(emb, (0, dim % 2))


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice with the time embedding added in between, plus a skip."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(min(groups, c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2 = nn.GroupNorm(min(groups, c_out), c_out)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(self.drop(F.silu(self.norm2(h))))
        return self.skip(x) + h


class Attention(nn.Module):
    """Single-head self-attention over the pixels, with a residual connection."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(min(groups, channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(B, 3, C, H * W).unbind(1)
        h = F.scaled_dot_product_attention(q.mT, k.mT, v.mT)  # (B, HW, C)
        return x + self.out(h.mT.reshape(B, C, H, W))


class UNet(nn.Module):
    """A small UNet ``eps_theta(x_t, t)`` predicting the noise in ``x_t``.

    Level ``i`` works at resolution ``size / 2**i`` with ``channels[i]`` channels and
    ``blocks`` residual blocks; the up path mirrors it with skip connections from every block.
    The input side must be divisible by ``2 ** (len(channels) - 1)``.

    Args:
        in_channels (int): Image channels. Default 1.
        channels (Sequence[int]): Channels per level. Default (32, 64, 64).
        blocks (int): Residual blocks per level on the down path. Default 1.
        attention (bool): Self-attention at the lowest resolution. Default True.
        groups (int): Group-norm groups. Default 8.
        dropout (float): Dropout inside the residual blocks. Default 0.0.
        steps (int): Number of diffusion steps of the schedule (for the time embedding's
            scale; the model is called with integer steps in ``[0, steps)``). Default 1000.

    Example:
        >>> net = UNet(channels=(8, 16), groups=4)
        >>> net(torch.randn(2, 1, 8, 8), torch.tensor([3, 900])).shape
        torch.Size([2, 1, 8, 8])
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: Sequence[int] = (32, 64, 64),
        blocks: int = 1,
        attention: bool = True,
        groups: int = 8,
        dropout: float = 0.0,
        steps: int = 1000,
    ):
        super().__init__()
        channels = list(channels)
        if not channels or blocks < 1:
            raise ValueError(f"need at least one level and one block, got {channels}, {blocks}")
        self.in_channels = in_channels
        self.levels = len(channels)
        self.steps = steps
        emb_dim = 4 * channels[0]
        self.emb_in = channels[0]
        self.time = nn.Sequential(
            nn.Linear(channels[0], emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.stem = nn.Conv2d(in_channels, channels[0], 3, padding=1)

        def block(c_in: int, c_out: int) -> ResBlock:
            return ResBlock(c_in, c_out, emb_dim, groups, dropout)

        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        skips, c = [channels[0]], channels[0]
        for i, width in enumerate(channels):
            level = nn.ModuleList()
            for _ in range(blocks):
                level.append(block(c, width))
                c = width
                skips.append(c)
            self.down.append(level)
            if i < self.levels - 1:
                self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
                skips.append(c)
        self.mid1 = block(c, c)
        self.mid_attn = Attention(c, groups) if attention else None
        self.mid2 = block(c, c)
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i, width in reversed(list(enumerate(channels))):
            level = nn.ModuleList()
            for _ in range(blocks + 1):
                level.append(block(c + skips.pop(), width))
                c = width
            self.up.append(level)
            if i > 0:
                self.upsample.append(nn.Conv2d(c, c, 3, padding=1))
        self.head = nn.Sequential(nn.GroupNorm(min(groups, c), c), nn.SiLU())
        self.out = nn.Conv2d(c, in_channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """Predicts the noise in ``x`` (N, C, H, W) at integer steps ``t`` (N,)."""
        side = 2 ** (self.levels - 1)
        if x.shape[-1] % side or x.shape[-2] % side:
            raise ValueError(
                f"image size {tuple(x.shape[-2:])} must be divisible by {side} "
                f"for {self.levels} levels"
            )
        emb = self.time(timestep_embedding(t, self.emb_in).to(x.dtype))
        h = self.stem(x)
        hs = [h]
        for i, level in enumerate(self.down):
            for blk in level:
                h = blk(h, emb)
                hs.append(h)
            if i < self.levels - 1:
                h = self.downsample[i](h)
                hs.append(h)
        h = self.mid1(h, emb)
        if self.mid_attn is not None:
            h = self.mid_attn(h)
        h = self.mid2(h, emb)
        for j, level in enumerate(self.up):
            for blk in level:
                h = blk(torch.cat([h, hs.pop()], dim=1), emb)
            if j < self.levels - 1:
                h = self.upsample[j](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.out(self.head(h))


class NoiseNet(nn.Module):
    """The noise model under the zoo's net contract: ``net(x_t, t) -> ([eps], None)``.

    The samplers and the inversion call :attr:`unet` (a plain ``eps_theta(x, t)``); this
    wrapper is what the Lightning module trains through. The noise model has no equilibrium
    of its own (the DEQ is the sampler's joint DDIM system), so there is no spectral radius or
    Jacobian regulariser to give.

    Args:
        unet (UNet): The noise model.

    Example:
        >>> net = NoiseNet(UNet(channels=(8, 16), groups=4))
        >>> out, info = net(torch.zeros(2, 1, 8, 8), torch.tensor([0, 999]))
        >>> out[0].shape, info
        (torch.Size([2, 1, 8, 8]), None)
    """

    def __init__(self, unet: UNet):
        super().__init__()
        self.unet = unet

    def forward(
        self, x: Tensor, t: Tensor, sradius_mode: bool = False, jac_loss: bool = False
    ) -> tuple[list[Tensor], None]:
        if jac_loss:
            raise ValueError(
                "the noise model has no equilibrium to regularise (the DEQ is the sampler's "
                "joint DDIM system): set loss.jac_loss_weight=0"
            )
        return [self.unet(x, t)], None
