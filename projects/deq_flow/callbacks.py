"""Artefacts of a DEQ-Flow run: flow pictures of every real test pair."""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np

from deqzoo.artefacts import run_file
from deqzoo.module import OUTPUTS

from .render import epe_image, flow_to_colour, write_png

__all__ = ["FlowImages"]


class FlowImages(L.Callback):
    """Writes ``<pair>_pred.png``, ``<pair>_gt.png`` and ``<pair>_error.png`` at test time.

    Flows are in the Middlebury colour coding with one saturation scale per pair (the longest
    true flow); the error map is the end-point error, saturated at 10 px. Synthetic test pairs
    are skipped.

    Args:
        folder (str, optional): Sub-folder of the run folder. Default ``'flow_images'``.
    """

    def __init__(self, folder: str = "flow_images") -> None:
        self.folder = folder

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        produced = outputs.get(OUTPUTS) if isinstance(outputs, dict) else None
        if not trainer.is_global_zero or not produced:
            return
        for b, name in enumerate(produced["names"]):
            if name == "synthetic":
                continue
            pred = produced["flow"][b].float().cpu().numpy()
            target = batch["flow"][b].float().cpu().numpy()
            valid = batch["valid"][b].cpu().numpy().astype(bool)
            scale = float(np.linalg.norm(target, axis=0)[valid].max()) if valid.any() else None
            for kind, image in (
                ("pred", flow_to_colour(pred, scale)),
                ("gt", flow_to_colour(target, scale, valid)),
                ("error", epe_image(pred, target, valid)),
            ):
                write_png(image, run_file(trainer, f"{self.folder}/{name}_{kind}.png"))
