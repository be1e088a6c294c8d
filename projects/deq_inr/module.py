"""The DEQ-INR LightningModule: fit one signal, report PSNR against wall-clock time."""

from __future__ import annotations

import csv
import json
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deqzoo.module import DEQLitModule
from projects.deq_inr.data import Signal, psnr
from projects.deq_inr.net import count_parameters
from projects.deq_inr.render import plot_psnr_curves, save_reconstruction
from torchdeq import fp_correction

__all__ = ["INRModule"]

CURVE_CSV = "psnr_curve.csv"
CURVE_PNG = "psnr_curve.png"
SUMMARY = "inr_summary.json"


class INRModule(DEQLitModule):
    """Fits a coordinate network to one signal with the mean squared error.

    Training batches are random coordinates; the loss is applied to every state the net returns
    (fixed-point correction, weights ``gamma ** (n - 1 - k)``; one state: the plain MSE), and
    ``train/psnr`` is that of the batch. Validation and test cover the whole signal: they log
    ``stage/loss`` (MSE) and ``stage/psnr`` of the whole signal with predictions clamped to its
    range, and write, in the run folder (the trainer's ``default_root_dir``):

    * ``reconstruction.png`` / ``.wav`` (test: ``test_reconstruction``), via
      :func:`projects.deq_inr.render.save_reconstruction`;
    * ``psnr_curve.csv`` and ``psnr_curve.png``: validation PSNR against the wall-clock
      seconds since training started;
    * ``inr_summary.json`` (after training): parameters, steps, time, last PSNR, peak RSS.

    The signal (its shape and range) comes from the datamodule's ``signal`` attribute; without
    one, the PSNR assumes values in ``[0, 1]`` and nothing is rendered.

    Args:
        net (nn.Module): ``net(coords, index=, sradius_mode=)`` returning ``(list of
            predictions, info)``, e.g. :class:`~projects.deq_inr.net.DEQINR`.
        optimizer (Callable[..., torch.optim.Optimizer]): A partial optimiser.
        scheduler (Callable[..., Any], optional): A partial scheduler. Default None.
        gamma (float, optional): Decay of the fixed-point correction weights. Default 0.8.
        render (bool, optional): Write reconstructions and curves. Default True.
        **kwargs: ``scheduler_interval`` and ``scheduler_monitor`` of :class:`DEQLitModule`.

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
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        gamma: float = 0.8,
        render: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(net, optimizer, scheduler, **kwargs)
        self.gamma = gamma
        self.render = render
        self.curve: list[tuple[float, int, float]] = []
        self._start: float | None = None
        self._preds: list[tuple[Tensor, Tensor]] = []
        self._sse = 0.0
        self._count = 0

    # -- the signal --------------------------------------------------------------------------

    @property
    def signal(self) -> Signal | None:
        """The datamodule's signal, if the trainer has a datamodule that holds one."""
        trainer = self._trainer
        datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
        return getattr(datamodule, "signal", None)

    def _range(self) -> tuple[float, float]:
        signal = self.signal
        return signal.value_range if signal is not None else (0.0, 1.0)

    def _folder(self) -> Path:
        return Path(self.trainer.default_root_dir)

    # -- steps -------------------------------------------------------------------------------

    def batch_size(self, batch: dict[str, Tensor]) -> int:
        """Coordinates in the batch, so that epoch means of the MSE weigh every one equally."""
        return int(batch["index"].numel())

    def model_step(self, batch: dict[str, Tensor], stage: str) -> dict[str, Tensor]:
        preds = self(batch["coords"], index=batch["index"])
        target = batch["target"]
        loss = fp_correction(F.mse_loss, (preds, target), gamma=self.gamma)
        low, high = self._range()
        if stage == "train":
            mse = F.mse_loss(preds[-1].detach(), target)
            return {"loss": loss, "psnr": psnr(mse, high - low).float()}
        pred = preds[-1].detach().clamp(low, high)
        self._sse += float((pred - target).pow(2).sum())
        self._count += target.numel()
        self._preds.append((batch["index"].detach().cpu(), pred.cpu()))
        return {"loss": loss}

    # -- whole-signal metrics, renders and the curve -----------------------------------------

    def on_train_start(self) -> None:
        self._start = time.perf_counter()
        self.curve = []

    def _finish_eval(self, stage: str) -> float | None:
        """Logs the whole-signal PSNR; returns it (None without predictions)."""
        preds, self._preds = self._preds, []
        sse, count, self._sse, self._count = self._sse, self._count, 0.0, 0
        if not count:
            return None
        low, high = self._range()
        value = float(psnr(sse / count, high - low))
        self.log(f"{stage}/psnr", value, prog_bar=True, sync_dist=True)
        signal = self.signal
        if self.render and signal is not None and self.trainer.is_global_zero:
            index = torch.cat([i for i, _ in preds])
            values = torch.cat([p for _, p in preds])
            table = torch.zeros(len(signal.targets()), values.shape[1], dtype=values.dtype)
            table[index] = values
            stem = "reconstruction" if stage == "val" else "test_reconstruction"
            save_reconstruction(signal, table, self._folder(), stem)
        return value

    def on_validation_epoch_end(self) -> None:
        value = self._finish_eval("val")
        if value is None or self.trainer.sanity_checking or self._start is None:
            return
        self.curve.append((time.perf_counter() - self._start, int(self.global_step), value))
        if self.render and self.trainer.is_global_zero:
            self._write_curve()

    def on_test_epoch_end(self) -> None:
        self._finish_eval("test")

    def _write_curve(self) -> None:
        folder = self._folder()
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / CURVE_CSV, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["seconds", "step", "psnr"])
            writer.writerows((f"{s:.2f}", step, f"{p:.4f}") for s, step, p in self.curve)
        label = type(self.net).__name__
        points = [(s, p) for s, _, p in self.curve]
        plot_psnr_curves({label: points}, folder / CURVE_PNG, title=f"{label}: validation PSNR")

    def on_train_end(self) -> None:
        if not (self.render and self.trainer.is_global_zero and self._start is not None):
            return
        summary = {
            "net": type(self.net).__name__,
            "parameters": count_parameters(self.net),
            "steps": int(self.global_step),
            "seconds": round(time.perf_counter() - self._start, 2),
            "last_psnr": self.curve[-1][2] if self.curve else None,
            "best_psnr": max((p for _, _, p in self.curve), default=None),
            # ru_maxrss is in KiB on Linux: the whole process, interpreter and libraries included.
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }
        folder = self._folder()
        folder.mkdir(parents=True, exist_ok=True)
        (folder / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
