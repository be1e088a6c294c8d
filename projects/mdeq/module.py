"""The MDEQ LightningModule: image classification with fixed-point correction."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deqzoo.module import DEQLitModule
from torchdeq import fp_correction

__all__ = ["MDEQModule", "complete_scheduler"]


def complete_scheduler(
    factory: Callable[..., Any], optimizer: torch.optim.Optimizer, steps: int
) -> Any:
    """Builds a partial scheduler, filling in the schedule length it needs but was not given.

    ``OneCycleLR`` needs ``total_steps`` and ``CosineAnnealingLR`` needs ``T_max``; neither is
    known when the config is written (it depends on the data size, batch size and epochs), so
    they are filled from the trainer: ``T_max`` in the unit the scheduler steps in.

    Args:
        factory (Callable[..., Any]): A partial scheduler (``functools.partial``, as Hydra's
            ``_partial_: true`` gives) or any callable taking ``optimizer=``.
        optimizer (torch.optim.Optimizer): The optimiser to schedule.
        steps (int): Number of scheduler steps of the run (optimiser steps when stepping per
            batch, epochs when stepping per epoch).

    Returns:
        Any: The scheduler.

    Example:
        >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
        >>> factory = functools.partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=0.1)
        >>> complete_scheduler(factory, opt, steps=100).total_steps
        100
    """
    given = factory.keywords if isinstance(factory, functools.partial) else {}
    target = factory.func if isinstance(factory, functools.partial) else factory
    try:
        accepted = inspect.signature(target).parameters
    except (TypeError, ValueError):
        accepted = {}
    extra = {}
    if "total_steps" in accepted and given.get("total_steps") is None and not given.get("epochs"):
        extra["total_steps"] = max(int(steps), 1)
    if target is torch.optim.lr_scheduler.CosineAnnealingLR and given.get("T_max") is None:
        extra["T_max"] = max(int(steps), 1)
    return factory(optimizer=optimizer, **extra)


class MDEQModule(DEQLitModule):
    """Trains an :class:`~projects.mdeq.net.MDEQNet` with cross-entropy; logs loss and accuracy.

    When the DEQ returns several states in training (``n_states > 1`` or ``indexing``), the loss
    is the fixed-point correction of Bai et al. (2022): every state's cross-entropy, weighted by
    ``gamma ** (n - 1 - k)``. Accuracy is that of the last state (the fixed-point estimate).

    Weight decay applies to convolution and linear weights only: not to biases, group-norm
    affines and weight-norm scales (``*_g``), whose decay would shrink layers rather than
    regularise them.

    Args:
        net (nn.Module): ``net(x, sradius_mode=)`` returning ``(list of logits, info)``.
        optimizer (Callable[..., torch.optim.Optimizer]): A partial optimiser; its
            ``weight_decay`` applies to the decayed group.
        scheduler (Callable[..., Any], optional): A partial scheduler; ``OneCycleLR`` and
            ``CosineAnnealingLR`` get their length from the trainer. Default None.
        label_smoothing (float, optional): Label smoothing of the cross-entropy. Default 0.0.
        gamma (float, optional): Decay of the fixed-point correction weights. Default 0.8.
        **kwargs: ``scheduler_interval`` and ``scheduler_monitor`` of
            :class:`~deqzoo.module.DEQLitModule`.

    Example:
        >>> from projects.mdeq.net import MDEQNet
        >>> net = MDEQNet(1, 10, (8, 16), 8, downsample=1, head_channels=16, deq=dict(f_max_iter=3))
        >>> module = MDEQModule(net, functools.partial(torch.optim.Adam, lr=1e-3))
        >>> batch = (torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3]))
        >>> sorted(module.model_step(batch, "train"))
        ['acc', 'loss']
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        label_smoothing: float = 0.0,
        gamma: float = 0.8,
        **kwargs: Any,
    ) -> None:
        super().__init__(net, optimizer, scheduler, **kwargs)
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
        self.label_smoothing = label_smoothing
        self.gamma = gamma

    def model_step(self, batch: tuple[Tensor, Tensor], stage: str) -> dict[str, Tensor]:
        x, y = batch
        logits = self(x)

        def crit(out: Tensor, target: Tensor) -> Tensor:
            return F.cross_entropy(out, target, label_smoothing=self.label_smoothing)

        if len(logits) == 1:
            loss = crit(logits[0], y)
        else:
            loss = fp_correction(crit, (logits, y), gamma=self.gamma)
        acc = (logits[-1].detach().argmax(dim=-1) == y).float().mean()
        return {"loss": loss, "acc": acc}

    def batch_size(self, batch: tuple[Tensor, Tensor]) -> int:
        return int(batch[1].shape[0])

    def optim_params(self) -> list[dict[str, Any]]:
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            (decay if p.ndim > 1 and not name.endswith("_g") else no_decay).append(p)
        return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]

    def configure_optimizers(self) -> Any:
        factory = self.scheduler_factory
        if factory is None:
            return super().configure_optimizers()
        if self.hparams.scheduler_interval == "step":
            steps = int(self.trainer.estimated_stepping_batches)
        else:
            steps = max(int(self.trainer.max_epochs or 1), 1)
        # The base class calls scheduler_factory(optimizer=...); give it the completed one.
        self.scheduler_factory = functools.partial(complete_scheduler, factory, steps=steps)
        try:
            return super().configure_optimizers()
        finally:
            self.scheduler_factory = factory
