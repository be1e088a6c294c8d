"""DEQ-DDIM through the real Hydra config: a fast_dev_run with the whole evaluation."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lightning as L  # noqa: E402
from framework_toy import compose_config, quiet_trainer  # noqa: E402

from deqzoo.train import train  # noqa: E402

TINY = [
    "data=diffusion_digits",
    "model.net.unet.channels=[8,16]",
    "model.net.unet.groups=4",
    "model.evaluation.steps=3",
    "model.evaluation.curve_steps=[2]",
    "model.evaluation.curve_samples=2",
    "model.evaluation.curve_iters=null",
    "model.evaluation.fd_samples=8",
    "model.evaluation.grid_samples=4",
    "model.evaluation.classifier_epochs=1",
    "model.evaluation.inversion_images=2",
    "model.evaluation.inversion_iters=1",
    "model.evaluation.budget=2",
]

KEYS = (
    "test/ddim_deq_rms", "test/ddim_deq_maxabs", "test/deq_iters", "test/picard_iters",
    "test/fd_ddim", "test/fd_deq", "test/inversion_psnr_deq", "test/inversion_psnr_unrolled",
)  # fmt: skip


def test_deq_ddim_fast_dev_run_writes_metrics_and_artefacts(tmp_path):
    cfg = compose_config(["project=deq_ddim", "debug=fdr", *TINY], tmp_path)
    train(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for key in KEYS:
        assert key in metrics, key
    # with 3 steps, Picard is exact after 3 iterations at the latest
    assert metrics["test/picard_iters"] <= 3
    for name in ("samples_ddim.png", "samples_deq.png", "inversion.png", "agreement.png"):
        assert (tmp_path / name).is_file(), name


def test_deq_ddim_first_training_losses_are_pinned(tmp_path):
    cfg = compose_config(["project=deq_ddim", "debug=fdr", *TINY], tmp_path)
    L.seed_everything(cfg.seed)
    datamodule = hydra.utils.instantiate(cfg.data)
    model = hydra.utils.instantiate(cfg.model)
    losses = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            losses.append(round(float(outputs["loss"]), 4))

    trainer = quiet_trainer(max_steps=3, callbacks=[Record()], default_root_dir=tmp_path)
    trainer.fit(model, datamodule=datamodule)
    assert losses == pytest.approx(PINNED, abs=2e-4)


PINNED = [1.0305, 1.0031, 0.9585]
