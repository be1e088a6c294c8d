"""Optimisation plumbing: parameter groups, scheduler completion, warm-up + cosine, wall clock."""

from __future__ import annotations

import functools
import math

import hydra
import pytest
import torch
from framework_toy import compose_config, quiet_trainer

from deqzoo.optim import (
    WallClockExponentialLR,
    WarmupCosineLR,
    complete_scheduler,
    decay_groups,
)


def _opt(lr=1.0):
    return torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)


def test_optim_decay_groups_skip_biases_norms_and_gains():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.GroupNorm(2, 4))
    net.register_parameter("scale_g", torch.nn.Parameter(torch.ones(4, 1, 1, 1)))
    frozen = torch.nn.Parameter(torch.ones(3, 3), requires_grad=False)
    net.register_parameter("frozen", frozen)
    decay, plain = decay_groups(net.named_parameters())
    assert [p.shape for p in decay["params"]] == [(4, 1, 3, 3)] and "weight_decay" not in decay
    assert len(plain["params"]) == 4 and plain["weight_decay"] == 0.0  # bias, 2 affines, gain


@pytest.mark.parametrize(
    "factory,attribute",
    [
        (functools.partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=0.1), "total_steps"),
        (functools.partial(torch.optim.lr_scheduler.CosineAnnealingLR), "T_max"),
        (functools.partial(WarmupCosineLR, warmup=2), "total_steps"),
    ],
)
def test_optim_complete_scheduler_fills_the_length(factory, attribute):
    assert getattr(complete_scheduler(factory, _opt(), steps=37), attribute) == 37
    given = functools.partial(factory.func, **factory.keywords, **{attribute: 5})
    assert getattr(complete_scheduler(given, _opt(), steps=37), attribute) == 5


def test_optim_complete_scheduler_asks_for_the_length_only_when_needed():
    def no_length():
        raise AssertionError("length asked for")

    factory = functools.partial(torch.optim.lr_scheduler.StepLR, step_size=3)
    assert complete_scheduler(factory, _opt(), steps=no_length).step_size == 3


def test_optim_warmup_cosine_follows_the_formula():
    opt = _opt(2.0)
    sched = WarmupCosineLR(opt, total_steps=12, warmup=0.25, warmup_start=0.5, eta_min=0.2)
    rates = []
    for _ in range(14):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert rates[:3] == pytest.approx([1.0, 1.5 - 1 / 6, 2.0 - 1 / 3])  # 3 warm-up steps
    cosine = [0.2 + 1.8 * 0.5 * (1 + math.cos(math.pi * (t - 3) / 9)) for t in range(3, 13)]
    assert rates[3:12] == pytest.approx(cosine[:9])
    assert rates[12:] == pytest.approx([0.2, 0.2])  # at eta_min from total_steps on
    with pytest.raises(ValueError, match="not fewer than total_steps"):
        WarmupCosineLR(_opt(), total_steps=4, warmup=4)


def test_optim_wall_clock_lr_decays_with_elapsed_time(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr("deqzoo.optim.time.perf_counter", lambda: clock[0])
    opt = _opt()
    sched = WallClockExponentialLR(opt, budget_s=10.0, final_factor=0.01)
    for now, lr in ((105.0, 0.1), (110.0, 0.01), (200.0, 0.01)):
        clock[0] = now
        opt.step()
        sched.step()
        assert opt.param_groups[0]["lr"] == pytest.approx(lr)
    state = sched.state_dict()
    assert state["elapsed"] == pytest.approx(100.0) and "_last" not in state
    with pytest.raises(ValueError, match="budget_s must be > 0"):
        WallClockExponentialLR(opt, budget_s=0)


def test_optim_module_completes_a_configured_schedule(tmp_path):
    overrides = ["+scheduler@model.scheduler=warmup_cosine", "+model.scheduler_interval=step",
                 "trainer.max_epochs=2"]  # fmt: skip
    cfg = compose_config(["project=toy", *overrides], tmp_path)
    datamodule = hydra.utils.instantiate(cfg.data)
    model = hydra.utils.instantiate(cfg.model)
    trainer = quiet_trainer(max_epochs=2, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=datamodule)
    (scheduler,) = trainer.lr_scheduler_configs
    assert scheduler.scheduler.total_steps == 8 == trainer.global_step  # 2 epochs of 4 batches
    assert scheduler.scheduler.warmup_steps == 0  # 5% of 8 steps rounds to none


def test_optim_module_without_a_run_length_names_the_fix(tmp_path):
    overrides = ["+scheduler@model.scheduler=cosine", "+model.scheduler_interval=step"]
    cfg = compose_config(["project=toy", *overrides], tmp_path)
    datamodule = hydra.utils.instantiate(cfg.data)
    model = hydra.utils.instantiate(cfg.model)
    trainer = quiet_trainer(max_epochs=-1, max_time="00:00:00:05", default_root_dir=tmp_path)
    with pytest.raises(ValueError, match="trainer.max_steps or trainer.max_epochs"):
        trainer.fit(model, datamodule=datamodule)
