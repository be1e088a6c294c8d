"""The DEQ-INR LightningModule: fit one signal with the mean squared error, report its PSNR."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.image import PeakSignalNoiseRatio

from deqzoo.module import OUTPUTS, DEQLitModule
from projects.deq_inr.data import Signal, psnr

__all__ = ["INRModule"]


class INRModule(DEQLitModule):
    """Fits a coordinate network to one signal with the mean squared error.

    Training batches are random coordinates; the base applies the fixed-point correction over
    the states the net returns (one state: the plain MSE), and ``train/psnr`` is that of the
    batch. Validation and test cover the whole signal: they log ``stage/loss`` (MSE) and
    ``stage/psnr`` of the whole signal (torchmetrics, predictions clamped to the signal's range)
    and hand ``(index, prediction)`` to the callbacks as :data:`~deqzoo.module.OUTPUTS`, which
    render the reconstruction and the PSNR curve (:mod:`projects.deq_inr.callbacks`).

    The signal (its range) comes from the datamodule's ``signal`` attribute at setup; without
    one, values are taken to lie in ``[0, 1]``.

    Args:
        net (nn.Module): ``net(coords, index=, sradius_mode=, jac_loss=)`` returning ``(list of
            predictions, info)``, e.g. :class:`~projects.deq_inr.net.DEQINR`.
        optimizer (Callable[..., torch.optim.Optimizer]): A partial optimiser.
        **kwargs: ``scheduler``, ``scheduler_interval``, ``scheduler_monitor`` and ``loss`` of
            :class:`~deqzoo.module.DEQLitModule`.

    Example:
        >>> import functools
        >>> from projects.deq_inr.net import ExplicitINR, FourierFeatures
        >>> module = INRModule(ExplicitINR(FourierFeatures(2, 4), 1, width=8, depth=1),
        ...                    functools.partial(torch.optim.Adam, lr=1e-3))
        >>> batch = {"index": torch.arange(3), "coords": torch.zeros(3, 2),
        ...          "target": torch.zeros(3, 1)}
        >>> sorted(module.model_step(batch, "train"))
        ['loss', 'psnr']
    """

    def __init__(
        self, net: nn.Module, optimizer: Callable[..., torch.optim.Optimizer], **kwargs: Any
    ) -> None:
        super().__init__(net, optimizer, **kwargs)
        self.value_range = (0.0, 1.0)
        self._add_psnr()

    def _add_psnr(self) -> None:
        low, high = self.value_range
        self.add_metric(
            "psnr", lambda: PeakSignalNoiseRatio(data_range=(low, high)), stages=("val", "test")
        )

    @property
    def signal(self) -> Signal | None:
        """The datamodule's signal, if the trainer has a datamodule that holds one."""
        trainer = self._trainer
        datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
        return getattr(datamodule, "signal", None)

    def setup(self, stage: str) -> None:
        # Called after the datamodule's setup and before the module moves to its device.
        signal = self.signal
        if signal is not None and tuple(signal.value_range) != self.value_range:
            self.value_range = tuple(float(v) for v in signal.value_range)
            self._add_psnr()

    def batch_size(self, batch: dict[str, Tensor]) -> int:
        """Coordinates in the batch, so that epoch means of the MSE weigh every one equally."""
        return int(batch["index"].numel())

    def model_step(self, batch: dict[str, Tensor], stage: str) -> dict[str, Any]:
        preds = self(batch["coords"], index=batch["index"])
        target = batch["target"]
        loss = self.deq_loss(preds, lambda pred: F.mse_loss(pred, target))
        low, high = self.value_range
        if stage == "train":
            mse = F.mse_loss(preds[-1].detach(), target)
            return {"loss": loss, "psnr": psnr(mse, high - low).float()}
        pred = preds[-1].detach().clamp(low, high)
        metric = self.metric(stage, "psnr")
        metric.update(pred, target)
        return {"loss": loss, "psnr": metric, OUTPUTS: (batch["index"], pred)}
