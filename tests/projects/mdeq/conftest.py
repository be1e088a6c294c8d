"""A small MDEQ net for the project's tests (two branches of 4 and 8 channels, 3 classes)."""

from __future__ import annotations

import pytest
import torch

from projects.mdeq.net import MDEQNet

SMALL = dict(channels=(4, 8), stem_channels=4, num_groups=2, head_channels=8)


def _small_net(**kwargs) -> MDEQNet:
    options = dict(in_channels=1, num_classes=3, downsample=1, **SMALL)
    options.update(kwargs)
    torch.manual_seed(0)
    return MDEQNet(**options)


@pytest.fixture
def small_net():
    """``small_net(**kwargs)``: a seeded small :class:`MDEQNet`; kwargs override its options."""
    return _small_net
