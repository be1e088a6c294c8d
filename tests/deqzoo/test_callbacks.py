"""The DEQ callbacks: resets before every training step, solver statistics, dropout masks."""

from __future__ import annotations

import hydra
import lightning as L
import torch
from framework_toy import compose_config
from omegaconf import open_dict

import deqzoo.callbacks
from deqzoo.callbacks import DEQReset, DEQStats
from deqzoo.train import train
from torchdeq.dropout import VariationalDropout


def test_framework_deq_reset_runs_before_every_training_step(tmp_path, monkeypatch):
    events = []
    monkeypatch.setattr(deqzoo.callbacks, "reset_norm", lambda m: events.append("norm"))
    monkeypatch.setattr(deqzoo.callbacks, "reset_dropout", lambda m: events.append("dropout"))
    cfg = compose_config(["project=toy", "debug=tiny", "trainer.max_epochs=1"], tmp_path)
    with open_dict(cfg):
        cfg.test = False
    model_step = hydra.utils.get_class(cfg.model._target_).model_step

    def spy(self, batch, stage):
        events.append(stage)
        return model_step(self, batch, stage)

    monkeypatch.setattr(hydra.utils.get_class(cfg.model._target_), "model_step", spy)
    train(cfg)
    # 4 training batches, each after a reset of norms and masks; validation after a norm reset.
    assert events == ["norm", "dropout", "train"] * 4 + ["norm", "val", "val"]


def test_framework_deq_stats_summarise_known_values():
    info = {
        "nstep": torch.tensor([2, 6, 4]),
        "abs_lowest": torch.tensor([0.1, 0.2, 0.6]),
        "rel_lowest": torch.tensor([0.01, 0.02, 0.03]),
        "nonfinite": torch.tensor([False, True, False]),
        "converged": torch.tensor([True, False, False]),
    }
    got = {k: (round(float(v), 6), fx) for k, (v, fx) in DEQStats.summarise(info).items()}
    assert got == {
        "nstep": (4.0, "mean"),
        "nstep_max": (6.0, "max"),
        "abs_residual": (0.3, "mean"),
        "rel_residual": (0.02, "mean"),
        "nonfinite": (round(1 / 3, 6), "mean"),
        "converged": (round(1 / 3, 6), "mean"),
    }
    # simple_fixed_point_iter reports -1: nothing to log.
    assert DEQStats.summarise({"nstep": -torch.ones(1, 1)}) == {}


def test_framework_deq_stats_skip_the_residuals_of_a_solve_of_no_steps():
    # f_max_iter=0 (training by phantom steps alone): the lowest residuals are inf by
    # convention and must not be logged as values
    from torchdeq import get_deq

    _, info = get_deq(f_max_iter=0, grad=2)(lambda z: 0.5 * z + 1, torch.zeros(2, 3))
    got = DEQStats.summarise(info)
    assert "abs_residual" not in got and "rel_residual" not in got
    assert float(got["nstep"][0]) == 0.0 and float(got["converged"][0]) == 0.0
    _, info = get_deq(f_max_iter=2, grad=2)(lambda z: 0.5 * z + 1, torch.zeros(2, 3))
    assert torch.isfinite(DEQStats.summarise(info)["abs_residual"][0])


def test_framework_deq_reset_redraws_dropout_masks():
    torch.manual_seed(0)
    module = L.LightningModule()
    module.drop = VariationalDropout(0.5)
    module.train()
    x = torch.ones(4, 32)
    first = module.drop(x)
    assert torch.equal(module.drop(x), first)  # one mask across solver steps
    DEQReset().on_train_batch_start(None, module, None, 0)
    assert not torch.equal(module.drop(x), first)
