"""DEQ-INR through the real Hydra config: fast_dev_run per signal, a real step, the recipes."""

from __future__ import annotations

import json
import wave
from pathlib import Path

import hydra
import lightning as L
import numpy as np
import pytest
import torch
from framework_toy import assert_first_losses, compose_config, quiet_trainer
from torch.utils.data import DataLoader

from deqzoo.callbacks import DEQReset
from deqzoo.module import OUTPUTS
from deqzoo.train import train
from projects.deq_inr.net import DEQINR, ExplicitINR

EXPLICIT = "project/deq_inr/net@model.net=explicit"
SMALL = ["model.net.width=32", "model.net.filter.n_features=16"]


def _tone(path: Path) -> Path:
    samples = (0.3 * 32767 * np.sin(np.arange(2000) * 0.2)).astype(np.int16)
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(8000)
        f.writeframes(samples.tobytes())
    return path


@pytest.mark.parametrize(
    "overrides,output,losses",
    [
        (["data=camera_tiny"], "reconstruction.png", (0.3928321, 0.4521757)),
        (
            ["data=camera_tiny", EXPLICIT, "model.net.width=16", "model.net.match_width=32"],
            None,
            (0.4969615, 0.6209872),
        ),
        (["data=video_tiny"], "reconstruction.png", (0.2631546, 0.2341511)),
        (
            ["experiment=deq_inr/audio", "data.max_seconds=0.1", "model.net.filter.scale=50"],
            "wav",
            (0.08638494, 0.06895097),
        ),
    ],
    ids=["camera", "camera-explicit", "video", "audio"],
)
def test_deq_inr_fast_dev_run(overrides, output, losses, tmp_path):
    if output == "wav":
        overrides = [*overrides, f"data.path={_tone(tmp_path / 'tone.wav')}"]
        output = "test_reconstruction.wav"
    cfg = compose_config(["project=deq_inr", "debug=fdr", *SMALL, *overrides], tmp_path)
    train(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert "test/psnr" in metrics
    assert_first_losses(metrics, *losses)
    assert (tmp_path / (output or "test_reconstruction.png")).is_file()
    # The callbacks' curve and summary: one validation, after the one training step.
    rows = (tmp_path / "psnr_curve.csv").read_text().splitlines()
    assert rows[0] == "seconds,step,psnr" and len(rows) == 2
    assert float(rows[1].split(",")[2]) == pytest.approx(metrics["val/psnr"], abs=1e-3)
    summary = json.loads((tmp_path / "inr_summary.json").read_text())
    assert summary["steps"] == 1 and summary["parameters"] > 0 and summary["peak_rss_mib"] > 0


def test_deq_inr_one_optimisation_step_lowers_the_loss(tmp_path):
    # A tight evaluation solve: the loss then does not depend on the warm start.
    tight = ["deq.f_tol=1e-6", "deq.eval_f_max_iter=300"]
    cfg = compose_config(["project=deq_inr", "data=camera_tiny", *SMALL, *tight], tmp_path)
    torch.manual_seed(0)
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.setup("fit")
    model = hydra.utils.instantiate(cfg.model)
    batch = next(iter(datamodule.train_dataloader()))

    def loss() -> float:
        model.eval()
        with torch.no_grad():
            value = float(model.model_step(batch, "val")["loss"])
        model.train()
        return value

    before = loss()
    trainer = quiet_trainer(max_steps=1, callbacks=[DEQReset()])
    trainer.fit(model, train_dataloaders=DataLoader([batch], batch_size=None))
    assert loss() < before


@pytest.mark.parametrize(
    "experiment,net,checks",
    [
        ("camera", DEQINR, {"trainer.max_time": "00:00:10:00", "norm.norm_type": "weight_norm"}),
        ("camera_explicit", ExplicitINR, {"model.net.width": 256, "model.net.depth": None}),
        ("audio", DEQINR, {"model.net.filter.scale": 1000.0, "data.in_channels": 1}),
        ("video", DEQINR, {"data.in_channels": 3, "data.out_channels": 3}),
        (
            "video_siren",
            DEQINR,
            {
                "model.net.width": 2048,
                "model.net.activation": "sine",
                "deq.f_max_iter": 20,
                "deq.f_tol": 1e-6,
                "deq.f_stop_mode": "rel",
                "deq.grad": 3,
                "deq.n_states": 2,
                "norm.norm_type": "weight_norm",
                "model.optimizer.lr": 1e-3,
            },
        ),
    ],
)
def test_deq_inr_experiment_composes_the_recipe(experiment, net, checks, tmp_path):
    from omegaconf import OmegaConf

    cfg = compose_config([f"experiment=deq_inr/{experiment}"], tmp_path)
    assert cfg.hydra.runtime.choices.project == "deq_inr"
    for key, value in checks.items():
        assert OmegaConf.select(cfg, key) == value, key
    assert hydra.utils.get_class(cfg.model.net._target_) is net


def test_deq_inr_validation_psnr_is_that_of_the_whole_signal(tmp_path):
    cfg = compose_config(["project=deq_inr", "data=camera_tiny", *SMALL], tmp_path)
    torch.manual_seed(0)
    datamodule = hydra.utils.instantiate(cfg.data)
    model = hydra.utils.instantiate(cfg.model)
    parts = []

    class Collect(L.Callback):
        def on_validation_batch_end(self, trainer, pl_module, outputs, *args):
            parts.append(outputs[OUTPUTS])

    trainer = quiet_trainer(limit_val_batches=None, callbacks=[Collect()])
    (result,) = trainer.validate(model, datamodule=datamodule, verbose=False)
    assert len(parts) == 2  # 1024 coordinates in batches of 512
    index = torch.cat([i for i, _ in parts])
    pred = torch.cat([p for _, p in parts])
    assert sorted(index.tolist()) == list(range(datamodule.n_coords))
    mse = (pred.clamp(0, 1) - datamodule.targets[index]).pow(2).mean()
    assert result["val/psnr"] == pytest.approx(float(10 * torch.log10(1 / mse)), abs=1e-3)
