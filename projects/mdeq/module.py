"""The MDEQ LightningModule: image classification with the shared DEQ losses."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from deqzoo.module import DEQLitModule

__all__ = ["MDEQModule"]


class MDEQModule(DEQLitModule):
    """Trains an :class:`~projects.mdeq.net.MDEQNet` with cross-entropy; logs loss and accuracy.

    The project supplies only the per-state task loss (cross-entropy, optionally label-smoothed)
    and its metric (top-1 accuracy of the last state, the fixed-point estimate); the base
    applies the fixed-point correction over the states the DEQ returns (``n_states > 1`` or
    ``indexing``; Bai et al. 2022) and the Jacobian regularisation of the ``loss:`` node, and
    handles parameter groups (no decay for biases, group-norm affines and weight-norm gains)
    and scheduler lengths.

    Args:
        net (nn.Module): ``net(x, sradius_mode=, jac_loss=)`` returning ``(list of logits,
            info)``.
        optimizer (Callable[..., torch.optim.Optimizer]): A partial optimiser.
        num_classes (int): Classes of the accuracy metric (``${data.num_classes}``).
        label_smoothing (float, optional): Label smoothing of the cross-entropy. Default 0.0.
        **kwargs: ``scheduler``, ``scheduler_interval``, ``scheduler_monitor`` and ``loss`` of
            :class:`~deqzoo.module.DEQLitModule`.

    Example:
        >>> import functools
        >>> from projects.mdeq.net import MDEQNet
        >>> net = MDEQNet(1, 10, (8, 16), 8, downsample=1, head_channels=16, deq=dict(f_max_iter=3))
        >>> module = MDEQModule(net, functools.partial(torch.optim.Adam, lr=1e-3), num_classes=10)
        >>> batch = (torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3]))
        >>> sorted(module.model_step(batch, "train"))
        ['acc', 'loss']
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        num_classes: int,
        label_smoothing: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(net, optimizer, **kwargs)
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
        self.label_smoothing = label_smoothing
        self.add_metric("acc", lambda: MulticlassAccuracy(num_classes, average="micro"))

    def model_step(self, batch: tuple[Tensor, Tensor], stage: str) -> dict[str, Any]:
        x, y = batch
        logits = self(x)
        loss = self.deq_loss(
            logits, lambda out: F.cross_entropy(out, y, label_smoothing=self.label_smoothing)
        )
        acc = self.metric(stage, "acc")
        acc(logits[-1].detach(), y)
        return {"loss": loss, "acc": acc}

    def batch_size(self, batch: tuple[Tensor, Tensor]) -> int:
        return int(batch[1].shape[0])
