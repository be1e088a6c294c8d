"""The DEQ-Flow LightningModule: fixed-point correction in training, EPE/F1 on real pairs.

Training loss: the L1 flow error (RAFT's ``|du| + |dv|`` over pixels with ground truth) of every
state the net returns, through the framework's shared fixed-point correction
(:meth:`~deqzoo.module.DEQLitModule.deq_loss`, weights ``gamma ** (n - 1 - k)`` of the ``loss``
node) over the ``n_states`` sampled DEQ states (Bai et al., CVPR 2022). For the explicit
baseline (:class:`~projects.deq_flow.net.RAFTFlow`) the states are its ``K`` iterates, and the
same weighting is RAFT's sequence loss.

Evaluation: the flow predicted at the working resolution is upsampled to the ground truth's full
resolution and its vectors rescaled, then scored by end-point error (EPE) and F1-all over the
pixels with ground truth: ``test/epe_<pair>``, ``test/f1_<pair>``, ``test/epe`` (the mean over
the real pairs), ``test/epe_synthetic`` (held-out synthetic pairs); the solver statistics
(``test/nstep``, ``test/rel_residual``, ...) are logged by deqzoo's ``DEQStats`` callback.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric

from deqzoo.module import OUTPUTS, DEQLitModule

from .net import flow_l1
from .pairs import end_point_error, f1_all, resize_flow

__all__ = ["FlowModule"]

SYNTHETIC = "synthetic"


class FlowModule(DEQLitModule):
    """Trains DEQ-Flow (or its explicit baseline) on flow pairs and scores it on real pairs.

    Batches are dicts with ``image1``, ``image2`` (``(B, 3, h, w)``), ``flow`` (``(B, 2, H, W)``),
    ``valid`` (``(B, H, W)``) and ``index``; when ``(H, W) != (h, w)`` the prediction is resized
    to the ground truth first.

    Args:
        net (nn.Module): :class:`~projects.deq_flow.net.DEQFlow` or
            :class:`~projects.deq_flow.net.RAFTFlow`.
        optimizer (Callable): A partial optimiser.
        max_flow (float, optional): Pixels whose true flow is longer are left out of the
            training loss (RAFT uses 400). Default 400.
        pair_names (Sequence[str], optional): Names of the test items ``index < len(pair_names)``
            (the real pairs); the remaining test items are the held-out synthetic pairs.
            Default ``('motorcycle', 'aloe', 'graffiti')``.
        **kwargs: ``scheduler``, ``scheduler_interval``, ``scheduler_monitor`` and ``loss`` of
            :class:`~deqzoo.module.DEQLitModule`.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        max_flow: float = 400.0,
        pair_names: Sequence[str] = ("motorcycle", "aloe", "graffiti"),
        **kwargs: Any,
    ) -> None:
        super().__init__(net, optimizer, **kwargs)
        if not max_flow > 0:
            raise ValueError(f"max_flow must be > 0, got {max_flow!r}")
        self.max_flow = max_flow
        self.pair_names = [str(n) for n in pair_names]
        self.add_metric("epe", MeanMetric, stages=("train", "val"))
        for name in [*self.pair_names, SYNTHETIC]:
            self.add_metric(f"epe_{name}", MeanMetric, stages=("test",))
            self.add_metric(f"f1_{name}", MeanMetric, stages=("test",))

    def model_step(self, batch: dict[str, Tensor], stage: str) -> dict[str, Any]:
        flows = self(batch["image1"], batch["image2"])
        target, valid = batch["flow"], batch["valid"]
        if stage == "test":
            return self._score(flows[-1].detach(), batch)
        train_valid = valid & (torch.linalg.vector_norm(target, dim=1) < self.max_flow)
        loss = self.deq_loss(flows, lambda flow: flow_l1(flow, target, train_valid))
        epe = self.metric(stage, "epe")
        epe(end_point_error(flows[-1].detach(), target, valid))
        return {"loss": loss, "epe": epe}

    def _score(self, flow: Tensor, batch: dict[str, Tensor]) -> dict[str, Any]:
        """Per-pair EPE and F1-all at the ground truth's resolution; the flow for callbacks."""
        target, valid = batch["flow"], batch["valid"]
        if flow.shape[-2:] != target.shape[-2:]:
            flow = resize_flow(flow, tuple(target.shape[-2:]))
        out: dict[str, Any] = {}
        names = []
        for b in range(flow.shape[0]):
            index = int(batch["index"][b])
            name = self.pair_names[index] if index < len(self.pair_names) else SYNTHETIC
            names.append(name)
            for kind, score in (("epe", end_point_error), ("f1", f1_all)):
                metric = self.metric("test", f"{kind}_{name}")
                metric(score(flow[b], target[b], valid[b]))
                out[f"{kind}_{name}"] = metric
        out[OUTPUTS] = {"flow": flow, "names": names}
        return out

    def on_test_epoch_end(self) -> None:
        # test/epe: the mean over the real pairs that were tested (each pair weighs the same).
        real = [
            self.metric("test", f"epe_{name}")
            for name in self.pair_names
            if self.metric("test", f"epe_{name}").update_count
        ]
        if real:
            self.log("test/epe", torch.stack([m.compute() for m in real]).mean(), sync_dist=False)
