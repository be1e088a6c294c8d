"""Training for a budget of process CPU time: a learning-rate schedule and a stopping callback.

The default run is meant to take 20 minutes on an idle 2-core machine with one torch thread,
where CPU time and wall-clock time agree. On a shared machine wall-clock time is at the mercy of
the other jobs, while the CPU time a step needs stays about the same; budgeting CPU time makes a
run (its step count, its schedule, its result) the same whatever the load, and makes an
explicit baseline "trained for the same time" comparable.
"""

from __future__ import annotations

import time

import lightning as L
from torch.optim import Optimizer

from deqzoo.optim import WallClockLR

__all__ = ["CPUTimeBudget", "CPUTimeLR"]


class CPUTimeLR(WallClockLR):
    """Linear warm-up then linear decay over a budget of process CPU seconds.

    ``lr = base_lr * max(p / warmup, 1e-3)`` while warming up, then
    ``base_lr * (1 - (1 - final_factor) * p')``, with ``p`` the spent fraction of the budget and
    ``p'`` its fraction after the warm-up. The budget bookkeeping (and resuming) is
    :class:`deqzoo.optim.WallClockLR`'s, on the process CPU clock.

    Args:
        optimizer (Optimizer): The optimiser.
        budget_s (float): CPU seconds of the schedule (``time.process_time`` of this process).
        warmup (float, optional): Fraction of the budget spent warming up. Default 0.05.
        final_factor (float, optional): Final fraction of the rate. Default 0.05.
        last_epoch (int, optional): As for every PyTorch scheduler. Default -1.

    Example:
        >>> import torch
        >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        >>> sched = CPUTimeLR(opt, budget_s=1e-9, final_factor=0.5)
        >>> opt.step(); sched.step()
        >>> opt.param_groups[0]["lr"]
        0.5
    """

    @staticmethod
    def clock() -> float:
        return time.process_time()

    def __init__(
        self,
        optimizer: Optimizer,
        budget_s: float,
        warmup: float = 0.05,
        final_factor: float = 0.05,
        last_epoch: int = -1,
    ) -> None:
        if not 0 <= warmup < 1 or not 0 < final_factor <= 1:
            raise ValueError(
                f"need 0 <= warmup < 1 and 0 < final_factor <= 1, got {warmup}, {final_factor}"
            )
        self.warmup, self.final_factor = warmup, final_factor
        super().__init__(optimizer, budget_s, last_epoch)

    def get_lr(self) -> list[float]:
        p = self.progress
        if p < self.warmup:
            f = max(p / self.warmup, 1e-3)
        else:
            f = 1.0 - (1.0 - self.final_factor) * (p - self.warmup) / (1 - self.warmup)
        return [base * f for base in self.base_lrs]


class CPUTimeBudget(L.Callback):
    """Stops training once the process has spent ``budget_s`` CPU seconds since the fit began.

    Args:
        budget_s (float): CPU seconds (``time.process_time``), validation included.
    """

    def __init__(self, budget_s: float) -> None:
        if not budget_s > 0:
            raise ValueError(f"budget_s must be > 0, got {budget_s!r}")
        self.budget_s = float(budget_s)
        self.start: float | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = time.process_time()

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        spent = time.process_time() - (self.start or 0.0)
        if spent >= self.budget_s:
            trainer.should_stop = True
