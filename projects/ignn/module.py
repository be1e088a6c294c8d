"""The IGNN LightningModule: node (or graph) classification, single- or multi-label."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.data import Data
from torchmetrics.classification import MulticlassAccuracy, MultilabelF1Score

from deqzoo.module import DEQLitModule
from torchdeq.utils.checks import check_choice

__all__ = ["IGNNModule"]

TASKS = ("multiclass", "multilabel")


class IGNNModule(DEQLitModule):
    """Trains a graph net (``IGNN`` or the ``GCN`` baseline) on PyG batches.

    A batch is a PyG ``Data`` (or ``Batch``). If it carries ``<stage>_mask`` (transductive sets:
    one graph, three node masks), loss and metrics use the masked nodes; otherwise all nodes
    (inductive sets such as PPI) or all graphs (when the net pools). The base applies the
    fixed-point correction over the states the net returns and the Jacobian regularisation.

    * ``multiclass``: cross-entropy; logs ``loss`` and ``acc`` (torchmetrics accuracy).
    * ``multilabel``: binary cross-entropy per label; logs ``loss`` and ``f1``, the micro-F1
      over the whole epoch (torchmetrics, so counts are summed over batches and processes).

    After every optimiser step the net's ``project_()`` (if it has one) restores the
    well-posedness of the implicit layers (:meth:`after_optimizer_step`).

    Args:
        net (nn.Module): ``net(x, edge_index, batch=, edge_weight=, sradius_mode=, jac_loss=)``
            returning ``(list of logits, info)``.
        optimizer (Callable[..., torch.optim.Optimizer]): A partial optimiser.
        num_classes (int): Classes (``multiclass``) or labels (``multilabel``), for the metric.
        task (str, optional): ``'multiclass'`` or ``'multilabel'``. Default ``'multiclass'``.
        **kwargs: ``scheduler``, ``scheduler_interval``, ``scheduler_monitor`` and ``loss`` of
            :class:`~deqzoo.module.DEQLitModule`.

    Example:
        >>> import functools
        >>> from projects.ignn.net import GCN
        >>> from projects.ignn.data import make_chains
        >>> module = IGNNModule(GCN(2, 8, 2), functools.partial(torch.optim.Adam, lr=0.01), 2)
        >>> sorted(module.model_step(make_chains(chain_length=4), "train"))
        ['acc', 'loss']
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        num_classes: int,
        task: Literal["multiclass", "multilabel"] = "multiclass",
        **kwargs: Any,
    ) -> None:
        super().__init__(net, optimizer, **kwargs)
        self.task = check_choice("task", task, TASKS)
        if self.task == "multiclass":
            self.add_metric("acc", lambda: MulticlassAccuracy(num_classes, average="micro"))
        else:
            # Logits: a prediction is positive where the logit is > 0 (probability > 0.5).
            self.add_metric(
                "f1", lambda: MultilabelF1Score(num_classes, threshold=0.5, average="micro")
            )
        # The stage of the running step: batch_size() gets only the batch, not the stage.
        self._stage = "train"

    def _mask(self, batch: Data, stage: str) -> Tensor | None:
        key = f"{stage}_mask"
        return batch[key] if key in batch else None

    def batch_size(self, batch: Data) -> int:
        """Nodes (or graphs) scored in this batch, so that epoch means weigh them equally."""
        mask = self._mask(batch, self._stage)
        return int(mask.sum()) if mask is not None else int(batch.y.size(0))

    def model_step(self, batch: Data, stage: str) -> dict[str, Any]:
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
            loss = self.deq_loss(logits, lambda out: F.cross_entropy(out, y))
            acc = self.metric(stage, "acc")
            acc(logits[-1].detach(), y)
            return {"loss": loss, "acc": acc}
        loss = self.deq_loss(logits, lambda out: F.binary_cross_entropy_with_logits(out, y.float()))
        f1 = self.metric(stage, "f1")
        f1(torch.sigmoid(logits[-1].detach()), y.long())
        return {"loss": loss, "f1": f1}

    def after_optimizer_step(self) -> None:
        project = getattr(self.net, "project_", None)
        if project is not None:
            project()
