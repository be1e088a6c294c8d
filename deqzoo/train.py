"""The training recipe: ``python train.py project=NAME [group=option ...] [key=value ...]``.

Train (and test with the best checkpoint)::

    python train.py project=NAME solver=anderson grad=ift deq.f_max_iter=30

Evaluate a checkpoint without training, or resume a run::

    python train.py project=NAME train=false ckpt_path=logs/NAME/runs/.../checkpoints/last.ckpt
    python train.py project=NAME ckpt_path=logs/NAME/runs/.../checkpoints/last.ckpt

Sweep (one run folder per combination, named after its overrides)::

    python train.py -m project=NAME solver=anderson,broyden grad=ift,phantom
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from deqzoo import ROOT
from deqzoo.instantiate import instantiate_named

__all__ = ["train", "main"]

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {name: float(value) for name, value in metrics.items()}


def _best_checkpoint(trainer: L.Trainer) -> str | None:
    callback = trainer.checkpoint_callback
    path = getattr(callback, "best_model_path", "") if callback is not None else ""
    return path or None


def _monitored(cfg: DictConfig, trainer: L.Trainer, metrics: dict[str, float]) -> float | None:
    """The value a sweeper optimises: the best checkpoint's score, else the last value."""
    callback = trainer.checkpoint_callback
    score = getattr(callback, "best_model_score", None) if callback is not None else None
    if score is not None and getattr(callback, "monitor", None) == cfg.monitor:
        return float(score)
    value = metrics.get(cfg.monitor)
    if value is None:
        log.warning("monitored metric %r was not logged; known: %s", cfg.monitor, sorted(metrics))
    return value


def train(cfg: DictConfig) -> float | None:
    """Runs one experiment from a composed config.

    Seeds everything, instantiates datamodule, model, callbacks, loggers and trainer; fits
    (unless ``cfg.train`` is false); tests with the best checkpoint (or ``cfg.ckpt_path`` when
    not training); writes all final metrics to ``metrics.json`` in the run folder.

    Args:
        cfg (DictConfig): The composed ``conf/train.yaml``.

    Returns:
        float | None: The value of ``cfg.monitor`` (best checkpoint score when available).

    Raises:
        ValueError: If ``train=false`` is given without a ``ckpt_path`` to evaluate.
    """
    if not cfg.train and not cfg.get("ckpt_path"):
        raise ValueError("train=false evaluates a checkpoint: give ckpt_path=PATH/TO.ckpt")
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)

    log.info("instantiating datamodule <%s>", cfg.data._target_)
    datamodule: L.LightningDataModule = hydra.utils.instantiate(cfg.data)
    log.info("instantiating model <%s>", cfg.model._target_)
    model: L.LightningModule = hydra.utils.instantiate(cfg.model)
    callbacks = instantiate_named(cfg.get("callbacks"), "callback")
    loggers = instantiate_named(cfg.get("logger"), "logger")
    trainer: L.Trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False
    )
    if trainer.loggers:
        # The Hydra node (present when composed by the tests) is Hydra's own business.
        run_cfg = OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])
        for logger in trainer.loggers:
            logger.log_hyperparams(OmegaConf.to_container(run_cfg, resolve=True))

    metrics: dict[str, float] = {}
    if cfg.train:
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        metrics.update(_scalars(trainer.callback_metrics))
    if cfg.test:
        ckpt_path = _best_checkpoint(trainer) if cfg.train else cfg.ckpt_path
        if ckpt_path is None:
            log.warning("no best checkpoint was saved; testing the current weights")
        trainer.test(model, datamodule=datamodule, ckpt_path=ckpt_path)
        test_metrics = _scalars(trainer.callback_metrics)
        metrics.update(test_metrics)
        log.info("test metrics (%s):\n%s", ckpt_path, json.dumps(test_metrics, indent=2))

    value = _monitored(cfg, trainer, metrics)
    if trainer.is_global_zero:
        output_dir = Path(cfg.paths.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        finite = {k: v if math.isfinite(v) else str(v) for k, v in sorted(metrics.items())}
        (output_dir / METRICS_FILE).write_text(json.dumps(finite, indent=2) + "\n")
        log.info("metrics written to %s", output_dir / METRICS_FILE)
    return value


# An absolute path: relative ones are read as Python packages when this module is imported as
# deqzoo.train, and conf/ is a folder of YAML files, not a package.
@hydra.main(config_path=str(ROOT / "conf"), config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point: composes ``conf/train.yaml`` with the command line and trains."""
    try:
        return train(cfg)
    except Exception:
        # The traceback goes to this run's log file; a sweep lists the failure at its end.
        log.exception("run failed; overrides: %s", " ".join(HydraConfig.get().overrides.task))
        raise
