"""A toy DEQ project for the framework tests: a tanh equilibrium layer on 8x8 digits.

Its configs live in ``tests/framework_toy/conf`` and join the real ones through
``hydra.searchpath``, so deqzoo itself knows no project by name.
"""

from __future__ import annotations

import copy
import functools
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from deqzoo import ROOT
from deqzoo.loss import jac_loss_at
from deqzoo.module import DEQLitModule
from torchdeq.core import get_deq
from torchdeq.dropout import VariationalDropout
from torchdeq.norm import apply_norm

CONF_DIR = Path(__file__).resolve().parent / "conf"


class ToyDEQNet(nn.Module):
    """z* = dropout(tanh(W z* + U x)), logits = V z*; one set of logits per returned state."""

    def __init__(self, in_features=64, hidden=16, num_classes=10, deq=None, norm=None, dropout=0.0):
        super().__init__()
        self.inject = nn.Linear(in_features, hidden)
        self.cell = nn.Linear(hidden, hidden, bias=False)
        self.drop = VariationalDropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(hidden, num_classes)
        if norm is not None:
            apply_norm(self.cell, args=norm)
        self.deq = get_deq(deq)

    def forward(self, x, sradius_mode=False, jac_loss=False):
        u = self.inject(x.flatten(1))

        def f(z):
            return self.drop(torch.tanh(self.cell(z) + u))

        states, info = self.deq(f, torch.zeros_like(u), sradius_mode=sradius_mode)
        if jac_loss:
            info = {**info, "jac_loss": jac_loss_at(f, states[-1])}
        return [self.head(z) for z in states], info


class ToyModule(DEQLitModule):
    """Cross-entropy with the shared fixed-point correction; accuracy of the last state."""

    def __init__(self, net, optimizer, num_classes=10, **kwargs):
        super().__init__(net, optimizer, **kwargs)
        self.add_metric("acc", lambda: MulticlassAccuracy(num_classes, average="micro"))

    def model_step(self, batch, stage):
        x, y = batch
        logits = self(x)
        loss = self.deq_loss(logits, lambda out: nn.functional.cross_entropy(out, y))
        acc = self.metric(stage, "acc")
        acc(logits[-1].detach(), y)
        return {"loss": loss, "acc": acc}


# ---- test helpers -------------------------------------------------------------------------------

TESTS_DIR = Path(__file__).resolve().parents[1]
SEARCHPATH = f"hydra.searchpath=[file://{CONF_DIR}]"


@functools.lru_cache(maxsize=64)
def _compose(overrides: tuple[str, ...]):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=[SEARCHPATH, *overrides], return_hydra_config=True)


def compose_config(overrides=(), output_dir=None):
    """Composes conf/train.yaml (plus the toy configs) as ``python train.py`` would.

    The Hydra node is kept and registered, so ``${hydra:...}`` interpolations resolve; the run
    folder and log folder are moved to ``output_dir``. Compositions are cached (a copy is
    returned) because Hydra takes most of a second per composition.
    """
    cfg = copy.deepcopy(_compose(tuple(overrides)))
    HydraConfig.instance().set_config(cfg)
    if output_dir is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir)
            cfg.paths.log_dir = str(output_dir)
    return cfg


def quiet_trainer(**kwargs) -> L.Trainer:
    """A Lightning Trainer for unit tests: no logger, checkpoints, progress bar or summary."""
    options = dict(
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return L.Trainer(**{**options, **kwargs})


def run_train_py(args, cwd=ROOT, timeout=300):
    """Runs ``python train.py ARGS`` with the toy project importable; returns the result."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS_DIR), str(ROOT)]))
    env.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args, SEARCHPATH],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_first_losses(metrics, train_loss, test_loss, rel=1e-3):
    """Pins a ``debug=fdr`` run: its one training loss and the test loss after that step.

    A silent change to a model, a data pipeline or a default moves these numbers; a deliberate
    one updates them (the failure message prints the new values). The tolerance absorbs
    floating-point differences between machines, not changes of behaviour.
    """
    import pytest

    got = (metrics["train/loss"], metrics["test/loss"])
    assert got == pytest.approx((train_loss, test_loss), rel=rel), f"first losses now {got}"
