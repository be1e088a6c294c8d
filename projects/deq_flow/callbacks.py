"""Artefacts of a DEQ-Flow run: flow pictures of every real test pair."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np

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
        if not trainer.is_global_zero or not isinstance(outputs, dict):
            return
        out = Path(trainer.default_root_dir) / self.folder
        for b, name in enumerate(outputs.get("names", [])):
            if name == "synthetic":
                continue
            pred = outputs["flow"][b].float().cpu().numpy()
            target = batch["flow"][b].float().cpu().numpy()
            valid = batch["valid"][b].cpu().numpy().astype(bool)
            scale = float(np.linalg.norm(target, axis=0)[valid].max()) if valid.any() else None
            write_png(flow_to_colour(pred, scale), out / f"{name}_pred.png")
            write_png(flow_to_colour(target, scale, valid), out / f"{name}_gt.png")
            write_png(epe_image(pred, target, valid), out / f"{name}_error.png")
