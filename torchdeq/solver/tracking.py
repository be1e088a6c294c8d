"""Per-sample best iterates: the lowest residual, the step that reached it, the iterate.

Two trackers with one interface, because the cheap way differs by device. On the CPU a host
read is free and small tensor operations cost more than a Python loop over the batch, so
:class:`HostTracker` reads the residuals once per step and copies only the rows that
improved. On an accelerator :class:`DeviceTracker` keeps everything on the device with
batched ``where`` operations and reads nothing back unless early stopping asks.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

INF = float("inf")


class HostTracker:
    """Tracks best iterates with the residuals read to the host each step.

    Args:
        z0 (torch.Tensor): The initial guess ``(B, D)``, the best iterate until one improves.
        tol (float): Samples whose lowest residual is below ``tol`` are finished.
        early_stop (bool): Whether finished samples freeze and :meth:`finished` is used.
    """

    def __init__(self, z0: Tensor, tol: float, early_stop: bool):
        batch = z0.shape[0]
        self.tol = tol
        self.early_stop = early_stop
        self.lowest = [INF] * batch
        self.step = [0] * batch
        self.blown = [False] * batch
        self.buffer = z0.clone()  # holds the best rows when they come from several iterates
        self.best = self.buffer

    def observe(self, k: int, rank: Tensor, z: Tensor) -> None:
        """Takes the residuals ``rank`` of ``z = z_{k-1}`` in the stopping mode."""
        lowest, tol = self.lowest, self.tol
        rows = []
        for i, value in enumerate(rank.tolist()):
            if value < lowest[i] and not (self.early_stop and lowest[i] < tol):
                lowest[i] = value
                self.step[i] = k - 1
                rows.append(i)
            elif not math.isfinite(value):
                self.blown[i] = True
        if len(rows) == len(lowest):
            # iterates are never changed in place, so the best can be z itself
            self.best = z
        elif rows:
            if self.best is not self.buffer:
                self.buffer.copy_(self.best)
            index = torch.tensor(rows, device=z.device)
            self.buffer.index_copy_(0, index, z.index_select(0, index))
            self.best = self.buffer

    def finished(self) -> bool:
        """Whether every sample met ``tol`` or produced NaN/Inf (it will not recover)."""
        return all(low < self.tol or bad for low, bad in zip(self.lowest, self.blown))

    def summary(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """The lowest residuals and the steps that reached them, as tensors."""
        lowest = torch.tensor(self.lowest, dtype=like.dtype, device=like.device)
        return lowest, torch.tensor(self.step, device=like.device)


class DeviceTracker:
    """Tracks best iterates with batched device operations and no host reads.

    Args:
        z0 (torch.Tensor): The initial guess ``(B, D)``, the best iterate until one improves.
        tol (float): Samples whose lowest residual is below ``tol`` are finished.
        early_stop (bool): Whether finished samples freeze and :meth:`finished` is used.
    """

    def __init__(self, z0: Tensor, tol: float, early_stop: bool):
        batch = z0.shape[0]
        self.tol = tol
        self.early_stop = early_stop
        self.lowest = torch.full((batch,), INF, dtype=z0.dtype, device=z0.device)
        self.step = torch.zeros(batch, dtype=torch.long, device=z0.device)
        self.blown = torch.zeros(batch, dtype=torch.bool, device=z0.device)
        self.best = z0.clone()

    def observe(self, k: int, rank: Tensor, z: Tensor) -> None:
        improved = rank < self.lowest
        if self.early_stop:
            improved &= self.lowest >= self.tol
            self.blown |= ~torch.isfinite(rank)
        torch.where(improved, rank, self.lowest, out=self.lowest)
        self.step.masked_fill_(improved, k - 1)
        self.best = torch.where(improved[:, None], z, self.best)

    def finished(self) -> bool:
        # the one host read per step that early stopping costs
        return bool(((self.lowest < self.tol) | self.blown).all())

    def summary(self, like: Tensor) -> tuple[Tensor, Tensor]:
        return self.lowest, self.step


def make_tracker(z0: Tensor, tol: float, early_stop: bool) -> HostTracker | DeviceTracker:
    """The tracker that suits ``z0``'s device."""
    kind = HostTracker if z0.device.type == "cpu" else DeviceTracker
    return kind(z0, tol, early_stop)
