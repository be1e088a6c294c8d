"""The MDEQ net: tuple states of the branches, the fixed point, stem, fusion, dropout, norms."""

from __future__ import annotations

import pytest
import torch

from projects.mdeq.layers import Downsample, MultiscaleFusion, ResidualBlock
from projects.mdeq.net import MDEQNet, Stem
from torchdeq import reset_dropout


def _solve(net: MDEQNet, x: torch.Tensor):
    """Runs the net's DEQ on the cell alone and returns (states, info)."""
    xs = net.injection(net.stem(x))
    z_init = tuple(torch.zeros_like(x_i) for x_i in xs)
    return net.deq(lambda *zs: net.cell(zs, xs), z_init)


def test_mdeq_deq_returns_tuple_states_of_branch_shapes(small_net):
    net = small_net(channels=(4, 8, 8), deq=dict(f_max_iter=3, n_states=2))
    states, info = _solve(net, torch.randn(5, 1, 13, 11))
    # Branches halve with ceil: 13x11 -> 7x6 (stem), 4x3, 2x2.
    shapes = [(5, 4, 7, 6), (5, 8, 4, 3), (5, 8, 2, 2)]
    assert len(states) == 2
    for state in states:
        assert isinstance(state, tuple)
        assert [tuple(z.shape) for z in state] == shapes
    assert info["nstep"].shape == (5,) and info["abs_lowest"].shape == (5,)
    net.eval()
    states, _ = _solve(net, torch.randn(5, 1, 13, 11))
    assert len(states) == 1 and [tuple(z.shape) for z in states[0]] == shapes


def test_mdeq_net_returns_logits_per_state_and_solver_info(small_net):
    net = small_net(deq=dict(f_max_iter=4, n_states=3))
    logits, info = net(torch.randn(2, 1, 8, 8))
    assert [tuple(out.shape) for out in logits] == [(2, 3)] * 3
    assert info["abs_trace"].shape[0] == 2


def test_mdeq_net_fixed_point_is_a_fixed_point_of_the_cell(small_net):
    # Group norms make the cell blind to its weights' scale; a strong injection (large norm
    # affines) is what makes it a contraction, so Anderson can solve it to round-off.
    net = small_net(deq=dict(f_solver="anderson", f_max_iter=60, f_tol=1e-10)).double().eval()
    with torch.no_grad():
        for norm in net.injection.modules():
            if isinstance(norm, torch.nn.GroupNorm):
                norm.weight.mul_(5.0)
        x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
        (z_star,), info = _solve(net, x)
        f_z = net.cell(z_star, net.injection(net.stem(x)))
    assert bool((info["abs_lowest"] < 1e-9).all())
    for z, fz in zip(z_star, f_z):
        torch.testing.assert_close(fz, z, atol=1e-9, rtol=0)


@pytest.mark.parametrize("full_res_channels", [0, 4])
@pytest.mark.parametrize("downsample", [0, 1, 2])
def test_mdeq_stem_halves_the_resolution_with_ceil(downsample, full_res_channels):
    stem = Stem(2, 8, downsample, num_groups=2, full_res_channels=full_res_channels)
    out = stem(torch.randn(3, 2, 13, 11))
    side = 2**downsample
    assert out.shape == (3, 8, -(-13 // side), -(-11 // side))
    convs = [m for m in stem if isinstance(m, torch.nn.Conv2d)]
    # Space to depth replaces the full-resolution conv, so it has one conv fewer.
    assert len(convs) == max(downsample + (full_res_channels > 0), 1)


def test_mdeq_fusion_sums_every_resampled_branch():
    torch.manual_seed(0)
    fuse = MultiscaleFusion([2, 3, 4], num_groups=1)
    ys = [torch.randn(2, 2, 5, 5), torch.randn(2, 3, 3, 3), torch.randn(2, 4, 2, 2)]
    out = fuse(ys)
    # Branch 1 receives branch 0 downsampled once and branch 2 upsampled to 3x3.
    expected = torch.relu(ys[1] + fuse.paths[1][0](ys[0]) + fuse.paths[1][2](ys[2], (3, 3)))
    torch.testing.assert_close(out[1], expected)
    assert [o.shape for o in out] == [y.shape for y in ys]
    assert len(fuse.paths[2][0]) == 5  # two stride-2 steps: conv, norm, relu, conv, norm


def test_mdeq_downsample_rejects_zero_steps():
    with pytest.raises(ValueError, match="steps >= 1"):
        Downsample(4, 8, steps=0)


def test_mdeq_block_dropout_mask_is_fixed_until_reset():
    torch.manual_seed(0)
    block = ResidualBlock(8, num_groups=2, dropout=0.5).train()
    z, x = torch.randn(4, 8, 3, 3), torch.randn(4, 8, 3, 3)
    first = block(z, x)
    torch.testing.assert_close(block(z, x), first)  # the same mask at every solver step
    reset_dropout(block)
    assert not torch.allclose(block(z, x), first)
    block.eval()
    torch.testing.assert_close(block(z, x), block(z, x))


def test_mdeq_weight_norm_reaches_only_the_cell(small_net):
    net = small_net(norm=dict(norm_type="weight_norm"))
    cell_convs = [m for m in net.cell.modules() if isinstance(m, torch.nn.Conv2d)]
    assert cell_convs and all(hasattr(m, "weight_v") for m in cell_convs)
    outside = [m for m in (*net.stem, *net.head.modules()) if isinstance(m, torch.nn.Conv2d)]
    assert outside and not any(hasattr(m, "weight_v") for m in outside)
    plain = small_net(norm=dict(norm_type="none"))
    assert not any(hasattr(m, "weight_v") for m in plain.modules())


def test_mdeq_net_rejects_bad_shapes():
    with pytest.raises(ValueError, match="at least one branch"):
        MDEQNet(channels=())
    with pytest.raises(ValueError, match="downsample"):
        MDEQNet(channels=(4,), downsample=-1)
