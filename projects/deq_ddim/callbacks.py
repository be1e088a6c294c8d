"""Artefacts of the test stage, written into the run folder: sample grids and the agreement plot.

Both read what :meth:`DDIMModule.on_test_epoch_end` left in ``pl_module.results`` (see
:func:`projects.deq_ddim.evaluate.evaluate`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from torch import Tensor

from deqzoo.artefacts import run_file, write_run_file

__all__ = ["AgreementPlot", "SampleGrids", "image_grid", "plot_agreement", "write_grid"]


def image_grid(images: Tensor, columns: int | None = None, gap: int = 1) -> np.ndarray:
    """Tiles images (N, C, H, W) in ``[-1, 1]`` into one (rows*H, columns*W) array in [0, 1].

    Example:
        >>> import torch
        >>> image_grid(torch.zeros(5, 1, 2, 3), columns=2, gap=0).shape
        (6, 6)
    """
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) / 2).mean(1).numpy()
    n, h, w = x.shape
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    grid = np.ones((rows * (h + gap) - gap, columns * (w + gap) - gap))
    for i in range(n):
        r, c = divmod(i, columns)
        grid[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = x[i]
    return grid


def write_grid(images: Tensor, path: str | os.PathLike, scale: int = 4, **kw: Any) -> Path:
    """Writes :func:`image_grid` as an 8-bit PNG, each pixel ``scale`` x ``scale``."""
    from PIL import Image

    grid = image_grid(images, **kw)
    pixels = np.clip(np.rint(grid * 255), 0, 255).astype(np.uint8)
    pixels = np.kron(pixels, np.ones((scale, scale), np.uint8))
    Image.fromarray(pixels).save(path)
    return Path(path)


def plot_agreement(curves: Mapping[int, Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """RMS difference to sequential DDIM against parallel iterations: DEQ-DDIM and Picard."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for colour, (T, c) in zip(colours, sorted(curves.items())):
        floor = 1e-12  # exact agreement is drawn at the floor of the log axis
        ax.semilogy(np.maximum(c["deq_rms"], floor), "-", color=colour, label=f"DEQ-DDIM T={T}")
        ax.semilogy(np.maximum(c["picard_rms"], floor), ":", color=colour, label=f"Picard T={T}")
    ax.axhline(1e-3, color="grey", lw=0.8)
    ax.set_xlabel("parallel iterations (rounds of batched noise-model calls)")
    ax.set_ylabel("RMS difference to sequential DDIM")
    ax.set_ylim(1e-7, 3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def _results(pl_module: L.LightningModule) -> Mapping[str, Any]:
    return getattr(pl_module, "results", None) or {}


class SampleGrids(L.Callback):
    """Writes ``samples_<sampler>.png`` (DDIM, DEQ-DDIM, DDPM) and ``inversion.png``.

    ``inversion.png`` has four rows: targets, the analytic inversion's reconstruction, then
    the reconstructions after optimising through the unrolled chain and through the DEQ.
    """

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        res = _results(pl_module)
        for name, images in res.get("samples", {}).items():
            write_grid(images, run_file(trainer, f"samples_{name}.png"))
        inv = res.get("inversion")
        if inv:
            import torch

            from projects.deq_ddim.sampling import ddim_sample

            steps = pl_module.evaluation.get("steps", 50)
            rows = [inv["target"], inv["analytic"]]
            with torch.no_grad():
                for key in ("unrolled", "deq"):
                    unet = pl_module.net.unet
                    rows.append(ddim_sample(unet, pl_module.schedule, inv[key].x_T, steps))
            write_grid(torch.cat(rows), run_file(trainer, "inversion.png"), columns=len(rows[0]))


class AgreementPlot(L.Callback):
    """Writes ``agreement.png`` and ``agreement.json`` (the curves behind it)."""

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        curves = _results(pl_module).get("curves")
        if not curves:
            return
        plot_agreement(curves, run_file(trainer, "agreement.png"))
        write_run_file(trainer, "agreement.json", json.dumps({str(k): v for k, v in curves.items()}))
