"""The IGNN LightningModule: node (or graph) classification, single- or multi-label."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.data import Data

from deqzoo.module import DEQLitModule
from torchdeq import fp_correction
from torchdeq.utils.checks import check_choice

__all__ = ["IGNNModule"]

TASKS = ("multiclass", "multilabel")


def _micro_counts(logits: Tensor, y: Tensor) -> Tensor:
    """True positives, false positives and false negatives of thresholded multi-label logits."""
    pred, true = logits > 0, y > 0.5
    return torch.stack([(pred & true).sum(), (pred & ~true).sum(), (~pred & true).sum()])


class IGNNModule(DEQLitModule):
    """Trains a graph net (``IGNN`` or the ``GCN`` baseline) on PyG batches.

    A batch is a PyG ``Data`` (or ``Batch``). If it carries ``<stage>_mask`` (transductive sets:
    one graph, three node masks), loss and metrics use the masked nodes; otherwise all nodes
    (inductive sets such as PPI) or all graphs (when the net pools). The loss is applied to
    every state the net returns, weighted by :func:`torchdeq.loss.fp_correction` (one state:
    the plain loss).

    * ``multiclass``: cross-entropy; logs ``loss`` and ``acc``.
    * ``multilabel``: binary cross-entropy per label; logs ``loss`` and ``f1``, the micro-F1
      over the whole epoch (true/false positives and false negatives summed over batches).

    After every optimiser step the net's ``project_()`` (if it has one) restores the
    well-posedness of the implicit layers.

    Args:
        net (nn.Module): ``net(x, edge_index, batch=, edge_weight=, sradius_mode=)`` returning
            ``(list of logits, info)``.
        optimizer (Callable[..., torch.optim.Optimizer]): A partial optimiser.
        scheduler (Callable[..., Any], optional): A partial scheduler. Default None.
        task (str, optional): ``'multiclass'`` or ``'multilabel'``. Default ``'multiclass'``.
        **kwargs: ``scheduler_interval`` and ``scheduler_monitor`` of :class:`DEQLitModule`.

    Example:
        >>> import functools
        >>> from projects.ignn.net import GCN
        >>> from projects.ignn.data import make_chains
        >>> module = IGNNModule(GCN(2, 8, 2), functools.partial(torch.optim.Adam, lr=0.01))
        >>> sorted(module.model_step(make_chains(chain_length=4), "train"))
        ['acc', 'loss']
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        task: Literal["multiclass", "multilabel"] = "multiclass",
        **kwargs: Any,
    ) -> None:
        super().__init__(net, optimizer, scheduler, **kwargs)
        self.task = check_choice("task", task, TASKS)
        # Micro-F1 needs counts summed over the epoch, not an average of per-batch scores.
        self._counts: dict[str, Tensor] = {}
        # The stage of the running step: batch_size() gets only the batch, not the stage.
        self._stage = "train"

    def _mask(self, batch: Data, stage: str) -> Tensor | None:
        key = f"{stage}_mask"
        return batch[key] if key in batch else None

    def batch_size(self, batch: Data) -> int:
        """Nodes (or graphs) scored in this batch, so that epoch means weigh them equally."""
        mask = self._mask(batch, self._stage)
        return int(mask.sum()) if mask is not None else int(batch.y.size(0))

    def model_step(self, batch: Data, stage: str) -> dict[str, Tensor]:
        self._stage = stage
        logits = self(
            batch.x,
            batch.edge_index,
            batch=batch.batch if "batch" in batch else None,
            edge_weight=batch.edge_weight if "edge_weight" in batch else None,
        )
        y, mask = batch.y, self._mask(batch, stage)
        if mask is not None:
            logits, y = [out[mask] for out in logits], y[mask]
        if self.task == "multiclass":
            loss = fp_correction(F.cross_entropy, (logits, y))
            return {"loss": loss, "acc": (logits[-1].argmax(dim=-1) == y).float().mean()}
        y = y.float()
        loss = fp_correction(F.binary_cross_entropy_with_logits, (logits, y))
        counts = _micro_counts(logits[-1].detach(), y)
        self._counts[stage] = self._counts.get(stage, 0) + counts
        return {"loss": loss}

    def _log_f1(self, stage: str) -> None:
        counts = self._counts.pop(stage, None)
        if counts is None:
            return
        counts = self.all_gather(counts).reshape(-1, 3).sum(dim=0).float()
        tp, fp, fn = counts
        self.log(f"{stage}/f1", 2 * tp / (2 * tp + fp + fn).clamp_min(1), sync_dist=False)

    def on_train_epoch_end(self) -> None:
        self._log_f1("train")

    def on_validation_epoch_end(self) -> None:
        self._log_f1("val")

    def on_test_epoch_end(self) -> None:
        self._log_f1("test")

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        project = getattr(self.net, "project_", None)
        if project is not None:
            project()
