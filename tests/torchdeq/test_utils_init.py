"""torchdeq.utils.init: mixed_init draws half zeros, half standard normals."""

import pytest
import torch

from torchdeq.utils.init import mixed_init


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_mixed_init_shape_and_zero_fraction():
    z = mixed_init((100, 10, 100))
    assert z.shape == (100, 10, 100) and z.dtype == torch.get_default_dtype()
    zero = z == 0
    # Bernoulli(0.5) over 1e5 entries: standard error 0.0016.
    assert zero.double().mean().item() == pytest.approx(0.5, abs=0.01)
    kept = z[~zero]
    assert kept.mean().item() == pytest.approx(0.0, abs=0.02)
    assert kept.std().item() == pytest.approx(1.0, abs=0.02)


def test_mixed_init_device_dtype_and_randomness():
    a = mixed_init(torch.Size([4, 8]), device="cpu", dtype=torch.float64)
    b = mixed_init([4, 8], device=torch.device("cpu"), dtype=torch.float64)
    assert a.device.type == "cpu" and a.dtype == torch.float64
    assert not torch.equal(a, b)
