"""DEQ-INR nets: filters, the fixed point and its cache, gradients, parameter matching."""

from __future__ import annotations

import math

import pytest
import torch

from projects.deq_inr.net import (
    DEQINR,
    EquilibriumCell,
    ExplicitINR,
    FixedPointCache,
    FourierFeatures,
    GaborFilter,
    SineFilter,
    count_parameters,
    matched_depth,
)
from torchdeq.utils.checks import OptionError


def _net(**kwargs) -> DEQINR:
    torch.manual_seed(0)
    deq = {"f_max_iter": 60, "f_tol": 1e-5, "f_stop_mode": "rel", **kwargs.pop("deq", {})}
    return DEQINR(FourierFeatures(2, 8, scale=2.0), 1, width=16, deq=deq, **kwargs)


def test_fourier_features_are_sin_and_cos_of_the_projected_coordinates():
    torch.manual_seed(0)
    ff = FourierFeatures(2, 3, scale=5.0)
    x = torch.tensor([[0.25, -0.5]])
    phase = 2 * math.pi * x @ ff.frequencies
    assert torch.allclose(ff(x), torch.cat([phase.sin(), phase.cos()], dim=1))
    assert ff.out_features == 6 and "frequencies" in ff.state_dict()


def test_filters_have_the_announced_width_and_bounded_outputs():
    torch.manual_seed(0)
    x = torch.rand(50, 3) * 2 - 1
    for filt in (SineFilter(3, 7), GaborFilter(3, 7)):
        out = filt(x)
        assert out.shape == (50, filt.out_features) == (50, 7)
        assert out.abs().max() <= 1.0
    with pytest.raises(OptionError, match="scale must be > 0"):
        FourierFeatures(2, 4, scale=0.0)


def test_equilibrium_cell_rejects_an_unknown_activation():
    with pytest.raises(
        OptionError, match="unknown activation 'tanh'; valid choices: 'relu', 'sine'"
    ):
        EquilibriumCell(4, "tanh")


def test_fixed_point_cache_grows_and_remembers_states_and_residuals():
    cache = FixedPointCache(2)
    assert torch.equal(cache.read(torch.tensor([2])), torch.zeros(1, 2)) and len(cache) == 3
    assert cache.residual(torch.tensor([0])).isinf().all()
    cache.write(
        torch.tensor([1, 4]), torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([0.1, 0.2])
    )
    assert cache.read(torch.tensor([4, 1])).tolist() == [[3, 4], [1, 2]] and len(cache) == 5
    assert cache.residual(torch.tensor([1])).tolist() == pytest.approx([0.1])
    cache.clear()
    assert cache.read(torch.tensor([4])).eq(0).all() and cache.residual(torch.tensor([4])).isinf()
    assert "states" not in cache.state_dict()


def test_deq_inr_eval_returns_a_fixed_point_of_the_cell():
    net = _net().eval()
    x = torch.rand(20, 2) * 2 - 1
    with torch.no_grad():
        preds, info = net(x)
        u = net.inject(net.filter(x))
        z_star = torch.zeros(20, 16)
        for _ in range(200):
            z_star = net.cell(z_star, u)
    assert float(info["rel_lowest"].max()) < 1e-5
    assert torch.allclose(preds[0], net.readout(z_star), atol=1e-5)
    assert len(net.cache) == 0  # nothing is cached without an index


def test_deq_inr_cache_reuse_lowers_the_solver_steps_on_a_repeated_batch():
    net = _net().train()
    x, index = torch.rand(32, 2) * 2 - 1, torch.arange(32)
    _, cold = net(x, index=index)
    _, warm = net(x, index=index)
    assert float(cold["nstep"].mean()) > 5
    assert float(warm["nstep"].mean()) < 0.5 * float(cold["nstep"].mean())
    # Without reuse the second solve is as long as the first.
    fresh = _net(reuse=False).train()
    assert torch.equal(fresh(x, index=index)[1]["nstep"], fresh(x, index=index)[1]["nstep"])


def test_deq_inr_skips_the_solver_when_the_cache_is_converged():
    net = _net(skip_tol=1e-3).train()
    x, index = torch.rand(32, 2) * 2 - 1, torch.arange(32)
    _, first = net(x, index=index)  # never seen: infinite residuals, so it solves
    assert float(first["nstep"].max()) > 0
    preds, second = net(x, index=index)
    assert second["nstep"].eq(0).all() and second["abs_trace"].shape == (32, 0)
    # The residual is measured by the gradient step itself: it is that of the cached state.
    z0 = net.cache.read(index)
    u = net.inject(net.filter(x))
    assert float(second["rel_lowest"].max()) < 1e-3
    assert torch.allclose(preds[0], net.readout(net.cell(z0, u)), atol=1e-5)
    with pytest.raises(OptionError, match="skip_tol must be > 0"):
        _net(skip_tol=0.0)


def test_deq_inr_ift_gradient_matches_finite_differences():
    torch.set_default_dtype(torch.float64)
    try:
        net = _net(
            deq={"ift": True, "f_tol": 1e-12, "b_tol": 1e-12, "f_max_iter": 300, "b_max_iter": 300}
        )
        net.train()
        x, y = torch.rand(6, 2) * 2 - 1, torch.rand(6, 1)

        def loss() -> torch.Tensor:
            return ((net(x)[0][-1] - y) ** 2).sum()

        loss().backward()
        grad = net.inject.bias.grad.clone()
        eps = 1e-6
        numeric = torch.zeros_like(grad)
        with torch.no_grad():
            for i in range(len(grad)):
                net.inject.bias[i] += eps
                up = loss()
                net.inject.bias[i] -= 2 * eps
                down = loss()
                net.inject.bias[i] += eps
                numeric[i] = (up - down) / (2 * eps)
        assert torch.allclose(grad, numeric, rtol=1e-5, atol=1e-8)
    finally:
        torch.set_default_dtype(torch.float32)


def test_explicit_inr_matches_the_deq_parameter_count():
    torch.manual_seed(0)
    deq = DEQINR(FourierFeatures(2, 128), 1, width=400)
    explicit = ExplicitINR(FourierFeatures(2, 128), 1, width=256, depth=None, match_width=400)
    assert len(explicit.layers) == 4  # the first layer + 3 hidden
    assert count_parameters(deq) == 263_201 and count_parameters(explicit) == 263_425
    # Within half a hidden layer, whatever the sizes.
    for width, deq_width in ((64, 300), (128, 128), (32, 50)):
        depth = matched_depth(20, 3, width, deq_width)
        d = count_parameters(DEQINR(FourierFeatures(2, 10), 3, width=deq_width))
        e = count_parameters(ExplicitINR(FourierFeatures(2, 10), 3, width, depth))
        assert abs(d - e) <= (width * width + width) / 2
    with pytest.raises(OptionError, match="depth must be >= 0"):
        ExplicitINR(FourierFeatures(2, 4), 1, 8, depth=-1)
