"""The DEQ-Flow LightningModule: fixed-point correction in training, EPE/F1 on real pairs.

Training loss: the L1 flow error (RAFT's ``|du| + |dv|`` over pixels with ground truth) of every
state the net returns, weighted by ``gamma ** (n - 1 - k)`` (the fixed-point correction of Bai
et al., CVPR 2022, over the ``n_states`` sampled DEQ states). For the explicit baseline
(:class:`~projects.deq_flow.net.RAFTFlow`) the states are its ``K`` iterates, and the same
weighting is RAFT's sequence loss.

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

from deqzoo.module import DEQLitModule
from torchdeq import fp_correction

from .net import flow_l1
from .pairs import end_point_error, f1_all, resize_flow

__all__ = ["FlowModule"]


class FlowModule(DEQLitModule):
    """Trains DEQ-Flow (or its explicit baseline) on flow pairs and scores it on real pairs.

    Batches are dicts with ``image1``, ``image2`` (``(B, 3, h, w)``), ``flow`` (``(B, 2, H, W)``),
    ``valid`` (``(B, H, W)``) and ``index``; when ``(H, W) != (h, w)`` the prediction is resized
    to the ground truth first.

    Args:
        net (nn.Module): :class:`~projects.deq_flow.net.DEQFlow` or
            :class:`~projects.deq_flow.net.RAFTFlow`.
        optimizer (Callable): A partial optimiser.
        scheduler (Callable, optional): A partial scheduler (``OneCycleLR`` gets its
            ``total_steps`` from the trainer). Default None.
        gamma (float, optional): Decay of the earlier states' loss weights. Default 0.8.
        max_flow (float, optional): Pixels whose true flow is longer are left out of the
            training loss (RAFT uses 400). Default 400.
        pair_names (Sequence[str], optional): Names of the test items ``index < len(pair_names)``
            (the real pairs); the remaining test items are the held-out synthetic pairs.
            Default ``('motorcycle', 'aloe', 'graffiti')``.
        **kwargs: ``scheduler_interval``, ``scheduler_monitor`` of the base.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        gamma: float = 0.8,
        max_flow: float = 400.0,
        pair_names: Sequence[str] = ("motorcycle", "aloe", "graffiti"),
        **kwargs: Any,
    ) -> None:
        super().__init__(net, optimizer, scheduler, **kwargs)
        if not 0.0 < gamma <= 1.0:
            raise ValueError(f"gamma must be in (0, 1], got {gamma}")
        self.gamma = gamma
        self.max_flow = max_flow
        self.pair_names = list(pair_names)
        names = [*self.pair_names, "synthetic"]
        self.test_epe = nn.ModuleDict({n: MeanMetric() for n in names})
        self.test_f1 = nn.ModuleDict({n: MeanMetric() for n in names})

    # -- losses ----------------------------------------------------------------------------------

    def flow_loss(self, flows: Sequence[Tensor], target: Tensor, valid: Tensor) -> Tensor:
        """Gamma-weighted L1 over the returned states (fixed-point correction / sequence loss)."""
        valid = valid & (torch.linalg.vector_norm(target, dim=1) < self.max_flow)
        return fp_correction(flow_l1, (list(flows), target, valid), gamma=self.gamma)

    def model_step(self, batch: dict[str, Tensor], stage: str) -> dict[str, Tensor]:
        flows = self(batch["image1"], batch["image2"])
        target, valid = batch["flow"], batch["valid"]
        out = {"loss": self.flow_loss(flows, target, valid)}
        with torch.no_grad():
            out["epe"] = end_point_error(flows[-1].detach(), target, valid)
        return out

    # -- testing ---------------------------------------------------------------------------------

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Any]:
        self.deq_info = None
        flow = self(batch["image1"], batch["image2"])[-1]
        target, valid = batch["flow"], batch["valid"]
        if flow.shape[-2:] != target.shape[-2:]:
            flow = resize_flow(flow, tuple(target.shape[-2:]))
        results = []
        for b in range(flow.shape[0]):
            index = int(batch["index"][b])
            name = self.pair_names[index] if index < len(self.pair_names) else "synthetic"
            epe = end_point_error(flow[b], target[b], valid[b])
            self.test_epe[name].update(epe)
            self.test_f1[name].update(f1_all(flow[b], target[b], valid[b]))
            results.append((name, epe))
        return {
            "flow": flow.detach(),
            "names": [n for n, _ in results],
            "epe": [float(e) for _, e in results],
        }

    def on_test_epoch_end(self) -> None:
        metrics = {}
        real = []
        for name in self.test_epe:
            if self.test_epe[name].update_count == 0:
                continue
            metrics[f"test/epe_{name}"] = self.test_epe[name].compute()
            metrics[f"test/f1_{name}"] = self.test_f1[name].compute()
            if name != "synthetic":
                real.append(metrics[f"test/epe_{name}"])
        if real:
            metrics["test/epe"] = torch.stack(real).mean()
        self.log_dict(metrics)
        for metric in [*self.test_epe.values(), *self.test_f1.values()]:
            metric.reset()
