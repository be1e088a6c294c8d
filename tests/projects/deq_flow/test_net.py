"""DEQ-Flow's net: correlation lookup, convex upsampling, the DEQ and the explicit baseline."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from projects.deq_flow.net import (
    SIZES,
    CorrPyramid,
    DEQFlow,
    RAFTFlow,
    convex_upsample,
    count_parameters,
    flow_l1,
    sequence_loss,
)
from torchdeq import fp_correction
from torchdeq.utils.checks import OptionError

TINY = {
    "feature_dim": 16,
    "encoder_dims": (8, 8, 16),
    "hidden": 8,
    "context": 8,
    "motion_dims": (16, 8, 8, 8),
    "motion_out": 16,
    "head_dim": 16,
    "mask_dim": 16,
}


def _bilinear(image, x, y):
    """Brute-force bilinear value of (C, H, W) ``image`` at real (x, y), zero outside."""
    c, h, w = image.shape
    x0, y0 = int(torch.floor(torch.tensor(x))), int(torch.floor(torch.tensor(y)))
    out = torch.zeros(c, dtype=image.dtype)
    for xi, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
        for yi, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
            if 0 <= xi < w and 0 <= yi < h:
                out += wx * wy * image[:, yi, xi]
    return out


def test_corr_lookup_matches_brute_force_at_every_level():
    torch.manual_seed(0)
    b, c, h, w, r = 2, 5, 6, 8, 1
    f1, f2 = (
        torch.randn(b, c, h, w, dtype=torch.float64),
        torch.randn(b, c, h, w, dtype=torch.float64),
    )
    flow = torch.randn(b, 2, h, w, dtype=torch.float64) * 2
    pyramid = CorrPyramid(f1, f2, levels=2, radius=r)
    out = pyramid.lookup(flow)
    assert out.shape == (b, 2 * 9, h, w)
    for level in range(2):
        # Pooling the correlation over frame-2 pixels = correlating with pooled frame-2 features.
        f2_level = F.avg_pool2d(f2, 2**level) if level else f2
        for bi, py, px in [(0, 0, 0), (1, 3, 5), (0, 5, 7), (1, 2, 1)]:
            cx = (px + flow[bi, 0, py, px].item()) / 2**level
            cy = (py + flow[bi, 1, py, px].item()) / 2**level
            k = 0
            for dy in range(-r, r + 1):
                for dx in range(-r, r + 1):
                    feat = _bilinear(f2_level[bi], cx + dx, cy + dy)
                    expected = (f1[bi, :, py, px] * feat).sum() / c**0.5
                    got = out[bi, level * 9 + k, py, px]
                    assert torch.allclose(got, expected, atol=1e-10), (level, py, px, dy, dx)
                    k += 1


def test_convex_upsampling_of_a_constant_flow_is_that_constant():
    flow = torch.tensor([1.5, -2.0]).view(1, 2, 1, 1).expand(2, 2, 3, 5)
    up = convex_upsample(flow, torch.randn(2, 9 * 64, 3, 5) * 3)
    assert up.shape == (2, 2, 24, 40)
    assert torch.allclose(up, torch.tensor([12.0, -16.0]).view(1, 2, 1, 1).expand_as(up), atol=1e-5)


def test_sizes_have_the_papers_parameter_counts():
    assert 5.0e6 < count_parameters(DEQFlow("B")) < 5.6e6  # RAFT / DEQ-Flow-B: 5.3M
    assert 12.0e6 < count_parameters(DEQFlow("H")) < 13.6e6  # DEQ-Flow-H: 12.8M
    assert count_parameters(DEQFlow("small")) < 1.5e6
    assert count_parameters(DEQFlow()) == count_parameters(RAFTFlow())


def _images(b=2, h=32, w=40):
    torch.manual_seed(1)
    return torch.rand(b, 3, h, w), torch.rand(b, 3, h, w)


@pytest.mark.parametrize(
    "deq",
    [
        {"f_solver": "fixed_point_iter"},
        {"f_solver": "simple_fixed_point_iter"},
        {"f_solver": "anderson", "ift": True},
        {"f_solver": "broyden", "ift": True, "hook_ift": True},
        {"core": "indexing", "grad": 3, "tau": 0.8, "n_states": 2},
    ],
    ids=["fp", "simple_fp", "anderson_ift", "broyden_hook_ift", "indexing_phantom"],
)
def test_deq_flow_trains_with_every_solver_and_grad(deq):
    _trains(deq, "weight_norm")


@pytest.mark.parametrize("norm", ["spectral_norm", "none"])
def test_deq_flow_trains_with_every_norm(norm):
    _trains({"f_solver": "fixed_point_iter"}, norm)


def _trains(deq, norm):
    net = DEQFlow(
        widths=TINY, deq={"f_max_iter": 4, "b_max_iter": 4, **deq}, norm={"norm_type": norm}
    )
    image1, image2 = _images()
    flows, info = net(image1, image2)
    assert len(flows) == deq.get("n_states", 1)
    assert all(f.shape == (2, 2, 32, 40) for f in flows)
    sum(f.abs().mean() for f in flows).backward()
    grads = [p.grad for p in net.update.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert info["flow_low"].shape == (2, 2, 4, 5)


def test_deq_flow_returns_n_states_in_training_and_one_in_evaluation():
    net = DEQFlow(widths=TINY, deq={"f_max_iter": 6, "n_states": 3})
    image1, image2 = _images()
    assert len(net(image1, image2)[0]) == 3
    assert len(net.eval()(image1, image2)[0]) == 1


def test_flow_init_is_the_solvers_starting_point():
    net = DEQFlow(widths=TINY, deq={"f_max_iter": 5}).eval()
    image1, image2 = _images(1)
    start = torch.randn(1, 2, 4, 5)
    with torch.no_grad():
        _, info = net(image1, image2, flow_init=start, solver_kwargs={"max_iter": 0})
        _, moved = net(image1, image2, flow_init=start)
    assert torch.equal(info["flow_low"], start)
    assert not torch.equal(moved["flow_low"], start)
    with pytest.raises(ValueError, match="flow_init"):
        net(image1, image2, flow_init=torch.zeros(1, 2, 3, 3))


def test_jacobian_loss_is_a_differentiable_scalar():
    net = DEQFlow(widths=TINY, deq={"f_max_iter": 3})
    flows, info = net(*_images(), jac_loss=True)
    assert info["jac_loss"].dim() == 0 and info["jac_loss"] > 0
    info["jac_loss"].backward()
    assert net.update.head[0].weight.grad is not None


def test_raft_returns_every_iterate_and_backprops_through_all():
    net = RAFTFlow(iters=4, eval_iters=6, widths=TINY)
    image1, image2 = _images()
    flows, info = net(image1, image2)
    assert len(flows) == 4 and info is None
    flows[0].abs().mean().backward()  # the first iterate alone reaches the encoders
    assert net.cnet.stem[0].weight.grad is not None
    assert len(net.eval()(image1, image2)[0]) == 1


def test_sequence_loss_is_the_fixed_point_correction_with_exponential_weights():
    torch.manual_seed(0)
    flows = [torch.randn(2, 2, 8, 8) for _ in range(5)]
    target, valid = torch.randn(2, 2, 8, 8), torch.rand(2, 8, 8) > 0.3
    expected = fp_correction(flow_l1, (flows, target, valid), gamma=0.8)
    assert torch.allclose(sequence_loss(flows, target, valid, gamma=0.8), expected)


def test_bad_options_raise_with_the_choices():
    with pytest.raises(OptionError, match="size"):
        DEQFlow("XL")
    with pytest.raises(OptionError, match="unknown size key"):
        DEQFlow(widths={"hiden": 4})
    with pytest.raises(OptionError, match="gru"):
        DEQFlow(widths={**TINY, "gru": "lstm"})
    with pytest.raises(ValueError, match="multiples of 8"):
        DEQFlow(widths=TINY)(torch.rand(1, 3, 30, 40), torch.rand(1, 3, 30, 40))
    assert set(SIZES) == {"small", "B", "H"}
