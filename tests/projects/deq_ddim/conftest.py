"""A tiny noise model for the DEQ-DDIM tests, shared by the sampling and inversion tests."""

import pytest
import torch

from projects.deq_ddim.net import NoiseSchedule, UNet


class TinyModel(torch.nn.Module):
    """A tiny UNet as a noise model whose clean-image predictions stay inside (-1, 1).

    An untrained UNet's noise predictions make ``x0_hat`` explode at high noise (every value
    clipped, the chain insensitive to its input); this one predicts the noise that goes with
    ``x0_hat = 0.8 tanh(unet(x, t) + 0.3 x)``.
    """

    def __init__(self, seed: int, dtype):
        super().__init__()
        torch.manual_seed(seed)
        self.unet = UNet(channels=(4, 8), groups=2, attention=True).to(dtype)
        for p in self.unet.parameters():  # the zero-initialised output layers get weights
            if p.dim() > 1 and not p.detach().any():
                torch.nn.init.normal_(p, std=0.3)
        self.abar = NoiseSchedule(1000).alphas_cumprod.to(dtype)

    def forward(self, x, t):
        a = self.abar[t].view(-1, 1, 1, 1)
        x0 = 0.8 * torch.tanh(self.unet(x, t) + 0.3 * x)
        return (x - a.sqrt() * x0) / (1 - a).sqrt()


def _tiny_unet(seed: int = 0, dtype=torch.float64) -> TinyModel:
    return TinyModel(seed, dtype).eval()


@pytest.fixture
def tiny_unet():
    """``tiny_unet(seed=0, dtype=torch.float64)``: a seeded :class:`TinyModel` in eval mode."""
    return _tiny_unet
