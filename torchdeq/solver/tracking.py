"""Per-sample best iterates: the lowest residual, the step that reached it, the iterate.

Two trackers with one interface, because the cheap way differs by device. On the CPU a host
read is free and small tensor operations cost more than NumPy's, so :class:`HostTracker`
reads the residuals once per step and copies only the rows that improved. On an accelerator :class:`DeviceTracker` keeps everything on the device with
batched ``where`` operations and reads nothing back unless early stopping asks.
"""

from __future__ import annotations

import torch
from torch import Tensor

from torchdeq.solver.small import np

INF = float("inf")


class HostTracker:
    """Tracks best iterates with the residuals read to the host each step.

    The per-sample bookkeeping runs on NumPy arrays (about 1 us per operation, against
    4-20 us for a PyTorch CPU operation); only the rows that improved are copied.

    Args:
        z0 (torch.Tensor): The initial guess ``(B, D)``, the best iterate until one improves.
        tol (float): Samples whose lowest residual is below ``tol`` are finished.
        early_stop (bool): Whether finished samples freeze and :meth:`finished` is used.
    """

    def __init__(self, z0: Tensor, tol: float, early_stop: bool):
        batch = z0.shape[0]
        self.tol = tol
        self.early_stop = early_stop
        self.lowest = np.full(batch, INF)
        self.step = np.zeros(batch, dtype=np.int64)
        self.blown = np.zeros(batch, dtype=bool)
        self.buffer = z0.clone()  # holds the best rows when they come from several iterates
        self.best = self.buffer

    def observe(self, k: int, rank: Tensor, z: Tensor) -> None:
        """Takes the residuals ``rank`` of ``z = z_{k-1}`` in the stopping mode."""
        values = rank.numpy()
        improved = values < self.lowest
        if self.early_stop:
            improved &= ~(self.lowest < self.tol)  # finished samples stay as they are
        self.blown |= ~np.isfinite(values)
        count = np.count_nonzero(improved)
        if not count:
            return
        np.copyto(self.lowest, values, where=improved)
        np.copyto(self.step, k - 1, where=improved)
        if count == len(values):
            # iterates are never changed in place, so the best can be z itself
            self.best = z
            return
        if self.best is not self.buffer:
            self.buffer.copy_(self.best)
        index = torch.from_numpy(np.flatnonzero(improved))
        self.buffer.index_copy_(0, index, z.index_select(0, index))
        self.best = self.buffer

    def finished(self) -> bool:
        """Whether every sample met ``tol`` or produced NaN/Inf (it will not recover)."""
        return bool(((self.lowest < self.tol) | self.blown).all())

    def summary(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """The lowest residuals and the steps that reached them, as tensors."""
        lowest = torch.from_numpy(self.lowest).to(dtype=like.dtype, device=like.device)
        return lowest, torch.from_numpy(self.step).to(like.device)


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
    on_host = z0.device.type == "cpu" and np is not None
    kind = HostTracker if on_host else DeviceTracker
    return kind(z0, tol, early_stop)
