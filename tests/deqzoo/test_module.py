"""DEQLitModule: the shared losses (fixed-point correction, Jacobian regularisation), the loss
node every project wires, torchmetrics logging and the hook after each optimiser step."""

from __future__ import annotations

from pathlib import Path

import hydra
import pytest
import torch
from framework_toy import CONF_DIR, ROOT, compose_config, quiet_trainer
from omegaconf import OmegaConf

import deqzoo.loss
from deqzoo.loss import DEQLoss, jac_loss_at
from torchdeq.utils.checks import OptionError

JAC = ["loss.jac_loss_weight=1.0", "loss.jac_loss_freq=1.0"]


def _setup(*overrides):
    cfg = compose_config(["project=toy", *overrides])
    torch.manual_seed(0)
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.setup("fit")
    torch.manual_seed(0)
    return cfg, datamodule, hydra.utils.instantiate(cfg.model)


def _batch(datamodule):
    return next(iter(datamodule.train_dataloader()))


def _grads(model, batch, seed=0):
    model.train()
    model.zero_grad()
    torch.manual_seed(seed)
    metrics = model._step(batch, "train")
    metrics["loss"].backward()
    return metrics, torch.cat([p.grad.flatten() for p in model.parameters()])


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_module_jacobian_weight_changes_the_loss_and_the_gradients():
    _, datamodule, plain = _setup()
    _, _, regularised = _setup(*JAC)
    regularised.load_state_dict(plain.state_dict())
    batch = _batch(datamodule)
    base, g0 = _grads(plain, batch)
    reg, g1 = _grads(regularised, batch)
    assert "jac_loss" not in base and float(reg["jac_loss"]) > 0
    torch.testing.assert_close(reg["loss"], base["loss"] + reg["jac_loss"])
    assert not torch.allclose(g0, g1)


def test_module_jacobian_loss_is_logged_in_training(tmp_path):
    _, datamodule, model = _setup(*JAC)
    trainer = quiet_trainer(max_steps=2, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=datamodule)
    assert float(trainer.callback_metrics["train/jac_loss"]) > 0


def test_module_zero_jacobian_weight_does_no_jacobian_work(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("jac_reg called with jac_loss_weight=0")

    monkeypatch.setattr(deqzoo.loss, "jac_reg", refuse)
    _, datamodule, model = _setup()
    asked = []
    forward = model.net.forward
    model.net.forward = lambda *a, **k: asked.append(k.get("jac_loss", False)) or forward(*a, **k)
    trainer = quiet_trainer(max_steps=3, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=datamodule)
    assert len(asked) == 3 and not any(asked)
    assert "train/jac_loss" not in trainer.callback_metrics


def test_module_jacobian_frequency_draws_some_steps(tmp_path):
    _, datamodule, model = _setup("loss.jac_loss_weight=1.0", "loss.jac_loss_freq=0.5")
    asked = []
    forward = model.net.forward
    model.net.forward = lambda *a, **k: asked.append(k.get("jac_loss", False)) or forward(*a, **k)
    torch.manual_seed(3)
    trainer = quiet_trainer(max_epochs=3, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=datamodule)
    assert len(asked) == 12 and 0 < sum(asked) < 12


def test_module_jacobian_needs_a_net_with_an_equilibrium():
    _, datamodule, model = _setup(*JAC)
    forward = model.net.forward
    model.net.forward = lambda *a, **k: (forward(*a, **k)[0], None)
    with pytest.raises(RuntimeError, match="loss.jac_loss_weight=0"):
        model._step(_batch(datamodule), "train")


def test_loss_jacobian_of_a_tuple_state_covers_every_block():
    # f(z1, z2) = (3 z1, z2 / 2): ||J||_F^2 / d = (9 * 4 + 0.25 * 6) / 10 per sample.
    torch.manual_seed(0)
    z = (torch.randn(5, 4), torch.randn(5, 2, 3))
    value = jac_loss_at(lambda a, b: (3 * a, b / 2), z, vecs=400)
    assert float(value) == pytest.approx(3.75, rel=0.05)
    lin = torch.nn.Linear(4, 4, bias=False)
    exact = lin.weight.pow(2).sum() / 4  # J = W for every sample
    estimate = jac_loss_at(lin, torch.randn(8, 4), vecs=2000)
    assert float(estimate) == pytest.approx(float(exact), rel=0.05)


def test_loss_fixed_point_correction_uses_the_configured_weights():
    states = [torch.tensor(4.0), torch.tensor(2.0), torch.tensor(1.0)]
    assert float(DEQLoss(gamma=0.5).correction(states, lambda s: s)) == 1 + 1 + 1
    assert float(DEQLoss("const", gamma=None).correction(states, lambda s: s)) == 7
    assert float(DEQLoss().correction(torch.tensor(3.0), lambda s: s)) == 3  # one state


def test_loss_jacobian_weight_ramps_up_over_jac_incremental_steps():
    loss = DEQLoss(jac_loss_weight=2.0, jac_loss_freq=1.0, jac_incremental=4)
    assert [loss.jac_weight(s) for s in range(6)] == [0.5, 1.0, 1.5, 2.0, 2.0, 2.0]
    assert DEQLoss(jac_loss_weight=2.0, jac_loss_freq=1.0).jac_weight(0) == 2.0


@pytest.mark.parametrize(
    "options,match",
    [
        ({"weight_func": "linear"}, "loss.gamma=null"),
        ({"weight_func": "cubic"}, "cubic"),
        ({"jac_loss_weight": 1.0}, "both > 0"),
        ({"jac_loss_freq": 0.5}, "both > 0"),
        ({"jac_loss_weight": -1.0, "jac_loss_freq": 1.0}, ">= 0"),
        ({"jac_loss_weight": 1.0, "jac_loss_freq": 2.0}, r"\[0, 1\]"),
        ({"jac_incremental": -1}, "jac_incremental"),
        ({"gama": 0.5}, "unknown loss option"),
    ],
)
def test_loss_rejects_bad_options(options, match):
    with pytest.raises(OptionError, match=match):
        DEQLoss.from_config(options)


def _projects() -> list[str]:
    folders = (ROOT / "conf" / "project", CONF_DIR / "project")
    return sorted(p.stem for folder in folders for p in Path(folder).glob("*.yaml"))


@pytest.mark.parametrize("project", _projects())
def test_module_every_project_wires_every_loss_key(project):
    values = {"weight_func": "exp", "gamma": 0.3, "jac_loss_weight": 0.5, "jac_loss_freq": 0.25,
              "jac_incremental": 7}  # fmt: skip
    cfg = compose_config([f"project={project}", *(f"loss.{k}={v}" for k, v in values.items())])
    assert set(cfg.loss) == set(values)  # every key of the node is one DEQLoss reads
    assert OmegaConf.to_container(cfg.model)["loss"] == "${loss}"
    model = hydra.utils.instantiate(cfg.model)
    assert model.loss_options.to_dict() == values


def test_module_metrics_are_epoch_values_over_all_batches(tmp_path):
    _, datamodule, model = _setup()
    trainer = quiet_trainer(limit_val_batches=None, default_root_dir=tmp_path)
    (result,) = trainer.validate(model, datamodule=datamodule, verbose=False)
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in datamodule.val_dataloader():  # 128 images in two batches of 64
            correct += int((model(x)[-1].argmax(-1) == y).sum())
            total += len(y)
    assert total == 128 and result["val/acc"] == pytest.approx(correct / total)


def test_module_hook_runs_after_every_optimiser_step(tmp_path):
    _, datamodule, model = _setup()
    steps = []
    model.after_optimizer_step = lambda: steps.append(model.trainer.global_step)
    # 4 batches, 2 accumulated per step: 2 optimiser steps.
    trainer = quiet_trainer(max_epochs=1, accumulate_grad_batches=2, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=datamodule)
    assert len(steps) == 2


def test_module_model_step_needs_a_loss_in_training():
    _, datamodule, model = _setup()
    model.model_step = lambda batch, stage: {}
    with pytest.raises(KeyError, match="'loss'"):
        model._step(_batch(datamodule), "train")


def test_module_checkpoint_hyperparameters_load_with_weights_only(tmp_path):
    # Hydra hands nested nodes over as OmegaConf containers; a checkpoint holding them fails
    # torch.load(weights_only=True), which Lightning uses to test the best checkpoint.
    import functools

    from deqzoo.module import DEQLitModule

    class Module(DEQLitModule):
        def __init__(self, net, optimizer, evaluation, steps, **kwargs):
            super().__init__(net, optimizer, **kwargs)

    options = OmegaConf.create({"evaluation": {"steps": [10, 50]}, "steps": [1, 2]})
    module = Module(
        torch.nn.Linear(2, 2),
        functools.partial(torch.optim.SGD, lr=0.1),
        evaluation=options.evaluation,
        steps=options.steps,
    )
    assert module.hparams["evaluation"] == {"steps": [10, 50]}
    path = tmp_path / "hparams.pt"
    torch.save({"hyper_parameters": dict(module.hparams)}, path)
    loaded = torch.load(path, weights_only=True)["hyper_parameters"]
    assert loaded["evaluation"] == {"steps": [10, 50]} and loaded["steps"] == [1, 2]
