"""Lightning callbacks that every DEQ project needs.

* :class:`DEQReset` re-draws variational-dropout masks and recomputes normalised weights before
  each training batch (the weights changed at the last optimiser step), and recomputes the
  weights once before evaluating.
* :class:`DEQStats` logs the solver statistics of each batch: ``stage/nstep``,
  ``stage/nstep_max``, ``stage/abs_residual``, ``stage/rel_residual`` and, when the solver
  reports them, ``stage/nonfinite`` and ``stage/converged`` (fractions of the samples).
* :class:`SpectralRadius` has the DEQ estimate the spectral radius of its Jacobian at the fixed
  point during validation and logs ``val/sradius``.

They work with any LightningModule that keeps its last DEQ info dict in ``deq_info`` and honours
a ``sradius_mode`` flag, as :class:`deqzoo.module.DEQLitModule` does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from torchdeq.dropout import reset_dropout
from torchdeq.norm import reset_norm

__all__ = ["DEQReset", "DEQStats", "SpectralRadius"]

_STAGES = ("train", "val", "test")


class DEQReset(Callback):
    """Resets the DEQ's normalisation and variational-dropout masks at the right moments.

    Normalised weights (weight or spectral norm) are computed once per forward pass rather than
    at every solver step, so they must be recomputed after every optimiser step; dropout masks
    stay fixed across solver steps and are re-drawn per batch.

    Example:
        >>> trainer = L.Trainer(callbacks=[DEQReset()])
    """

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        reset_norm(pl_module)
        reset_dropout(pl_module)

    def _reset_weights(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Evaluation after training (or after loading a checkpoint) must not use the weights
        # computed before the last optimiser step.
        reset_norm(pl_module)

    on_validation_epoch_start = _reset_weights
    on_test_epoch_start = _reset_weights
    on_predict_epoch_start = _reset_weights


def _info_of(pl_module: L.LightningModule) -> Mapping[str, torch.Tensor] | None:
    info = getattr(pl_module, "deq_info", None)
    return info if isinstance(info, Mapping) and info else None


class DEQStats(Callback):
    """Logs the DEQ solver statistics of every batch, per stage.

    Training values are logged per step, validation and test values as epoch means (the
    ``nstep_max`` entry as the epoch maximum). Solvers that track no statistics (e.g.
    ``simple_fixed_point_iter``, which reports -1) are skipped, and so are the residuals of a
    solve that ran no step (``f_max_iter=0``).

    Args:
        stages (tuple[str, ...], optional): Which of ``'train'``, ``'val'``, ``'test'`` to log.
            Default all three.

    Example:
        >>> trainer = L.Trainer(callbacks=[DEQStats(stages=("val",))])
    """

    def __init__(self, stages: tuple[str, ...] | list[str] = _STAGES) -> None:
        unknown = [s for s in stages if s not in _STAGES]
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; valid choices: {list(_STAGES)}")
        self.stages = tuple(stages)

    @staticmethod
    def summarise(info: Mapping[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, str]]:
        """Reduces a DEQ info dict to ``{name: (value, reduce_fx)}`` scalars.

        Args:
            info (Mapping[str, torch.Tensor]): The DEQ's info dict (``nstep`` of shape (B,), ...).

        Returns:
            dict[str, tuple[torch.Tensor, str]]: Metric name (without stage) to a scalar and
            how to reduce it over an epoch; empty when the solver kept no statistics.

        Example:
            >>> info = {"nstep": torch.tensor([3, 5]), "abs_lowest": torch.tensor([0.1, 0.3])}
            >>> {k: round(float(v), 4) for k, (v, _) in DEQStats.summarise(info).items()}
            {'nstep': 4.0, 'nstep_max': 5.0, 'abs_residual': 0.2}
        """
        nstep = info.get("nstep")
        if nstep is None or bool((torch.as_tensor(nstep) < 0).all()):
            return {}
        nstep = torch.as_tensor(nstep).detach().float()
        out = {"nstep": (nstep.mean(), "mean"), "nstep_max": (nstep.max(), "max")}
        # A solve of no steps (f_max_iter=0: training by phantom steps alone) measured no
        # residual: its lowest residual is inf by convention, not a value to average.
        trace = info.get("abs_trace")
        measured = trace is None or torch.as_tensor(trace).shape[-1] > 0
        for key, name in (("abs_lowest", "abs_residual"), ("rel_lowest", "rel_residual")):
            if key in info and measured:
                out[name] = (torch.as_tensor(info[key]).detach().float().mean(), "mean")
        for key in ("nonfinite", "converged"):  # fractions of the batch
            if key in info:
                out[key] = (torch.as_tensor(info[key]).detach().float().mean(), "mean")
        return out

    def _log(self, pl_module: L.LightningModule, stage: str) -> None:
        info = _info_of(pl_module)
        if stage not in self.stages or info is None:
            return
        train = stage == "train"
        batch_size = int(torch.as_tensor(info["nstep"]).numel()) if "nstep" in info else None
        for name, (value, reduce_fx) in self.summarise(info).items():
            pl_module.log(
                f"{stage}/{name}",
                value,
                on_step=train,
                on_epoch=not train,
                reduce_fx=reduce_fx,
                sync_dist=not train,
                batch_size=batch_size,
            )

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        self._log(pl_module, "train")

    def on_validation_batch_end(self, trainer, pl_module: L.LightningModule, *args) -> None:
        self._log(pl_module, "val")

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        self._log(pl_module, "test")


class SpectralRadius(Callback):
    """Logs ``val/sradius``, the DEQ's estimate of the spectral radius of df/dz at z*.

    During validation it sets ``pl_module.sradius_mode``, so the module runs its DEQ with
    ``sradius_mode=True`` (a power method per batch) and the info dict holds ``sradius`` (B,).

    Args:
        every_n_epochs (int, optional): Measure at every n-th validation epoch. Default 1.
        max_batches (int, optional): Measure on at most this many batches per epoch (None: all).
            Default 4.

    Example:
        >>> trainer = L.Trainer(callbacks=[SpectralRadius(max_batches=2)])
    """

    def __init__(self, every_n_epochs: int = 1, max_batches: int | None = 4) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs!r}")
        self.every_n_epochs = every_n_epochs
        self.max_batches = max_batches

    def _active(self, trainer: L.Trainer, batch_idx: int) -> bool:
        if trainer.sanity_checking or trainer.current_epoch % self.every_n_epochs:
            return False
        return self.max_batches is None or batch_idx < self.max_batches

    def on_validation_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int, *args
    ) -> None:
        pl_module.sradius_mode = self._active(trainer, batch_idx)

    def on_validation_batch_end(self, trainer, pl_module: L.LightningModule, *args) -> None:
        info = _info_of(pl_module)
        if pl_module.sradius_mode and info is not None and "sradius" in info:
            sradius = torch.as_tensor(info["sradius"]).detach().float()
            pl_module.log(
                "val/sradius",
                sradius.mean(),
                on_step=False,
                on_epoch=True,
                sync_dist=True,
                batch_size=sradius.numel(),
            )
        pl_module.sradius_mode = False

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.sradius_mode = False
