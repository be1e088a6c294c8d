"""MDEQ training: the module's loss and parameter groups, the configs, a fast_dev_run."""

from __future__ import annotations

import functools
import json

import hydra
import pytest
import torch
from framework_toy import assert_first_losses, compose_config
from omegaconf import open_dict

from deqzoo.train import train
from projects.mdeq.module import MDEQModule
from torchdeq import reset_norm


def _module(net, lr: float = 0.05) -> MDEQModule:
    return MDEQModule(net, functools.partial(torch.optim.SGD, lr=lr), num_classes=3)


def test_mdeq_module_one_step_lowers_the_loss_on_a_fixed_batch(small_net):
    net = small_net(deq=dict(f_max_iter=8, grad=2, tau=0.7)).double()
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


def test_mdeq_module_several_states_use_fixed_point_correction(small_net):
    net = small_net(deq=dict(f_max_iter=4, n_states=2))
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


def test_mdeq_module_decays_only_weights(small_net):
    module = _module(small_net())
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
    assert_first_losses(metrics, 2.502773, 2.445519)
    assert {"test/acc", "test/loss", "test/nstep", "test/abs_residual"} <= set(metrics)
    assert 0.0 <= metrics["test/acc"] <= 1.0 and metrics["test/nstep"] >= 1
