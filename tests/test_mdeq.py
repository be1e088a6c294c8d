"""The MDEQ project: multiscale equilibrium net, its module, configs and a run on tiny data."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import hydra
import pytest
import torch
from omegaconf import open_dict

sys.path.insert(0, str(Path(__file__).resolve().parent))

from framework_toy import compose_config  # noqa: E402

from deqzoo.train import train  # noqa: E402
from projects.mdeq.layers import Downsample, MultiscaleFusion, ResidualBlock  # noqa: E402
from projects.mdeq.module import MDEQModule  # noqa: E402
from projects.mdeq.net import MDEQNet, Stem  # noqa: E402
from torchdeq import reset_dropout, reset_norm  # noqa: E402

SMALL = dict(channels=(4, 8), stem_channels=4, num_groups=2, head_channels=8)


def _net(**kwargs) -> MDEQNet:
    options = dict(in_channels=1, num_classes=3, downsample=1, **SMALL)
    options.update(kwargs)
    torch.manual_seed(0)
    return MDEQNet(**options)


def _solve(net: MDEQNet, x: torch.Tensor):
    """Runs the net's DEQ on the cell alone and returns (states, info)."""
    xs = net.injection(net.stem(x))
    z_init = tuple(torch.zeros_like(x_i) for x_i in xs)
    return net.deq(lambda *zs: net.cell(zs, xs), z_init)


def test_mdeq_deq_returns_tuple_states_of_branch_shapes():
    net = _net(channels=(4, 8, 8), deq=dict(f_max_iter=3, n_states=2))
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


def test_mdeq_net_returns_logits_per_state_and_solver_info():
    net = _net(deq=dict(f_max_iter=4, n_states=3))
    logits, info = net(torch.randn(2, 1, 8, 8))
    assert [tuple(out.shape) for out in logits] == [(2, 3)] * 3
    assert info["abs_trace"].shape[0] == 2


def test_mdeq_net_fixed_point_is_a_fixed_point_of_the_cell():
    # Group norms make the cell blind to its weights' scale; a strong injection (large norm
    # affines) is what makes it a contraction, so Anderson can solve it to round-off.
    net = _net(deq=dict(f_solver="anderson", f_max_iter=60, f_tol=1e-10)).double().eval()
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


def test_mdeq_weight_norm_reaches_only_the_cell():
    net = _net(norm=dict(norm_type="weight_norm"))
    cell_convs = [m for m in net.cell.modules() if isinstance(m, torch.nn.Conv2d)]
    assert cell_convs and all(hasattr(m, "weight_v") for m in cell_convs)
    outside = [m for m in (*net.stem, *net.head.modules()) if isinstance(m, torch.nn.Conv2d)]
    assert outside and not any(hasattr(m, "weight_v") for m in outside)
    plain = _net(norm=dict(norm_type="none"))
    assert not any(hasattr(m, "weight_v") for m in plain.modules())


def test_mdeq_net_rejects_bad_shapes():
    with pytest.raises(ValueError, match="at least one branch"):
        MDEQNet(channels=())
    with pytest.raises(ValueError, match="downsample"):
        MDEQNet(channels=(4,), downsample=-1)


def _module(net: MDEQNet, lr: float = 0.05) -> MDEQModule:
    return MDEQModule(net, functools.partial(torch.optim.SGD, lr=lr), num_classes=3)


def test_mdeq_module_one_step_lowers_the_loss_on_a_fixed_batch():
    net = _net(deq=dict(f_max_iter=8, grad=2, tau=0.7)).double()
    module = _module(net)
    torch.manual_seed(1)
    batch = (torch.randn(16, 1, 8, 8, dtype=torch.float64), torch.randint(0, 3, (16,)))
    optimizer = torch.optim.SGD(module.parameters(), lr=0.05)
    losses = []
    for _ in range(2):
        reset_norm(module)
        loss = module.model_step(batch, "train")["loss"]
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert losses[1] < losses[0]


def test_mdeq_module_several_states_use_fixed_point_correction():
    net = _net(deq=dict(f_max_iter=4, n_states=2))
    module = MDEQModule(
        net, functools.partial(torch.optim.SGD, lr=0.1), num_classes=3, loss={"gamma": 0.5}
    )
    batch = (torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 0]))
    torch.manual_seed(0)
    loss = module.model_step(batch, "train")["loss"]
    torch.manual_seed(0)
    logits, _ = net(batch[0])
    ce = [torch.nn.functional.cross_entropy(out, batch[1]) for out in logits]
    torch.testing.assert_close(loss, 0.5 * ce[0] + ce[1])


def test_mdeq_module_decays_only_weights():
    module = _module(_net())
    decay, no_decay = module.optim_params()  # the base's groups, on MDEQ's parameter names
    assert all(p.ndim > 1 for p in decay["params"])
    names = {id(p): n for n, p in module.named_parameters()}
    skipped = {names[id(p)].rsplit(".", 1)[-1] for p in no_decay["params"]}
    assert skipped == {"weight_g", "weight", "bias"}  # weight-norm scales, norm affines, biases
    assert no_decay["weight_decay"] == 0.0


# ---- configs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides,solver,ift,grad",
    [
        ([], "fixed_point_iter", False, [1]),
        (["solver=anderson"], "anderson", False, [1]),
        (["solver=broyden", "grad=ift"], "broyden", True, [1]),
        (["grad=phantom"], "fixed_point_iter", False, [5]),
    ],
)
def test_mdeq_config_group_choices_build_a_different_deq(overrides, solver, ift, grad, tmp_path):
    cfg = compose_config(["project=mdeq", *overrides], tmp_path)
    net = hydra.utils.instantiate(cfg.model.net)
    assert (net.deq.f_solver_name, net.deq.ift, net.deq.grad) == (solver, ift, grad)


def test_mdeq_experiment_cifar_large_has_the_paper_widths(tmp_path):
    cfg = compose_config(["experiment=mdeq/cifar_large"], tmp_path)
    assert list(cfg.model.net.channels) == [32, 64, 128, 256]
    assert (cfg.deq.f_solver, cfg.deq.f_max_iter, cfg.deq.grad, cfg.deq.tau) == (
        "broyden",
        18,
        5,
        0.7,
    )
    assert cfg.model.optimizer._target_ == "torch.optim.SGD" and cfg.model.optimizer.lr == 0.1
    assert cfg.trainer.max_epochs == 220 and cfg.data.augment


@pytest.mark.parametrize("experiment", ["cifar_small", "cifar_large"])
def test_mdeq_experiment_net_classifies_cifar_shaped_images(experiment, tmp_path):
    cfg = compose_config([f"experiment=mdeq/{experiment}"], tmp_path)
    with open_dict(cfg):
        cfg.deq.f_max_iter = 2  # shapes only; the recipe's 18 Broyden steps are not needed here
    net = hydra.utils.instantiate(cfg.model.net).eval()
    with torch.no_grad():
        logits, info = net(torch.randn(2, 3, 32, 32))
    assert logits[-1].shape == (2, 10) and info["nstep"].shape == (2,)


def test_mdeq_fast_dev_run_on_digits(tmp_path):
    cfg = compose_config(["project=mdeq", "data=digits", "debug=fdr"], tmp_path)
    torch.manual_seed(0)
    train(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert {"test/acc", "test/loss", "test/nstep", "test/abs_residual"} <= set(metrics)
    assert 0.0 <= metrics["test/acc"] <= 1.0 and metrics["test/nstep"] >= 1
