"""What a DEQ-INR run writes into its run folder, as Lightning callbacks (``callbacks=deq_inr``).

* :class:`Reconstruction`: the whole-signal prediction of every validation (and the test) as
  ``reconstruction.png`` / ``.wav`` (``test_reconstruction.*``).
* :class:`PSNRCurve`: validation PSNR against the wall-clock seconds since training started,
  as ``psnr_curve.csv`` and ``psnr_curve.png``.
* :class:`RunSummary`: ``inr_summary.json`` after training: parameters, steps, seconds, last and
  best validation PSNR, peak memory (host RSS; on a GPU also the peak allocated memory).

They read what :class:`projects.deq_inr.module.INRModule` hands over (``outputs['outputs']``
of a validation or test batch, ``val/psnr``) and write with :func:`deqzoo.artefacts.run_file`.
"""

from __future__ import annotations

import csv
import json
import resource
import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from deqzoo.artefacts import run_file, write_run_file
from deqzoo.module import OUTPUTS
from projects.deq_inr.net import count_parameters
from projects.deq_inr.render import plot_psnr_curves, reconstruction_name, save_reconstruction

__all__ = ["PSNRCurve", "Reconstruction", "RunSummary"]

CURVE_CSV = "psnr_curve.csv"
CURVE_PNG = "psnr_curve.png"
SUMMARY = "inr_summary.json"


def _signal(trainer: L.Trainer) -> Any:
    return getattr(getattr(trainer, "datamodule", None), "signal", None)


class Reconstruction(Callback):
    """Renders the whole-signal prediction after each validation and after the test.

    Args:
        stem (str, optional): File name of the validation render (the test's gets a ``test_``
            prefix). Default ``'reconstruction'``.
    """

    def __init__(self, stem: str = "reconstruction") -> None:
        self.stem = stem
        self._parts: list[tuple[torch.Tensor, torch.Tensor]] = []

    def _collect(self, outputs: Any) -> None:
        if isinstance(outputs, dict) and OUTPUTS in outputs:
            index, pred = outputs[OUTPUTS]
            self._parts.append((index.detach().cpu(), pred.detach().cpu()))

    def _write(self, trainer: L.Trainer, stem: str) -> None:
        parts, self._parts = self._parts, []
        signal = _signal(trainer)
        if not parts or signal is None or trainer.sanity_checking:
            return
        index = torch.cat([i for i, _ in parts])
        values = torch.cat([p for _, p in parts])
        table = torch.zeros(len(signal.targets()), values.shape[1], dtype=values.dtype)
        table[index] = values
        path = run_file(trainer, reconstruction_name(signal, stem))
        if path is not None:
            save_reconstruction(signal, table, path)

    def on_validation_batch_end(self, trainer, pl_module, outputs, *args: Any) -> None:
        self._collect(outputs)

    def on_test_batch_end(self, trainer, pl_module, outputs, *args: Any) -> None:
        self._collect(outputs)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, self.stem)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, f"test_{self.stem}")


class _Clock(Callback):
    """Seconds since training started (``on_train_start``)."""

    def __init__(self) -> None:
        self._start: float | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def seconds(self) -> float | None:
        return None if self._start is None else time.perf_counter() - self._start


class PSNRCurve(_Clock):
    """Records ``(seconds, step, val/psnr)`` after every validation; writes the CSV and plot.

    Args:
        monitor (str, optional): The logged metric to record. Default ``'val/psnr'``.
    """

    def __init__(self, monitor: str = "val/psnr") -> None:
        super().__init__()
        self.monitor = monitor
        self.points: list[tuple[float, int, float]] = []

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self.points = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After the epoch's metrics are computed (on_validation_epoch_end comes before that).
        seconds = self.seconds()
        value = trainer.callback_metrics.get(self.monitor)
        if trainer.sanity_checking or seconds is None or value is None:
            return
        self.points.append((seconds, int(trainer.global_step), float(value)))
        rows = [["seconds", "step", "psnr"]]
        rows += [[f"{s:.2f}", step, f"{p:.4f}"] for s, step, p in self.points]
        path = run_file(trainer, CURVE_CSV)
        if path is None:
            return
        with open(path, "w", newline="") as f:
            csv.writer(f).writerows(rows)
        label = type(pl_module.net).__name__
        plot_psnr_curves(
            {label: [(s, p) for s, _, p in self.points]},
            run_file(trainer, CURVE_PNG),
            title=f"{label}: validation PSNR",
        )


class RunSummary(_Clock):
    """Writes ``inr_summary.json`` when training ends.

    Args:
        monitor (str, optional): The metric whose last and best values are reported.
            Default ``'val/psnr'``.
    """

    def __init__(self, monitor: str = "val/psnr") -> None:
        super().__init__()
        self.monitor = monitor
        self.values: list[float] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if not trainer.sanity_checking and self._start is not None and value is not None:
            self.values.append(float(value))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        seconds = self.seconds()
        if seconds is None:
            return
        summary = {
            "net": type(pl_module.net).__name__,
            "parameters": count_parameters(pl_module.net),
            "steps": int(trainer.global_step),
            "seconds": round(seconds, 2),
            "last_psnr": self.values[-1] if self.values else None,
            "best_psnr": max(self.values, default=None),
            # ru_maxrss is in KiB on Linux: the whole process, interpreter and libraries included.
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }
        device = pl_module.device
        if device.type == "cuda":
            summary["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        write_run_file(trainer, SUMMARY, json.dumps(summary, indent=2) + "\n")
