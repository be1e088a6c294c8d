"""Learning-rate schedules of the language models: linear warm-up, then cosine decay, measured
in optimiser steps (the paper recipe) or in wall-clock seconds (a fixed time budget).

A model trained for a time budget takes as many steps as the machine allows, which a step
schedule cannot know in advance; :class:`WarmupCosine` with ``budget_s`` reaches its final rate
when the budget is spent, whatever the step count, so models of different speed compared at
the same wall clock each get a full schedule.
"""

from __future__ import annotations

import math
import time
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

__all__ = ["WarmupCosine"]


class WarmupCosine(LRScheduler):
    """Linear warm-up over ``warmup_steps`` optimiser steps, then cosine decay to
    ``final_factor * base_lr`` at the end of the run: ``total_steps`` steps, or ``budget_s``
    seconds of wall clock (validation included) when given.

    Args:
        optimizer (Optimizer): The optimiser.
        total_steps (int, optional): Length of the run in steps (filled in from the trainer
            by :class:`~projects.deq_lm.module.LMModule` when None and no budget is given).
        budget_s (float, optional): Length of the run in seconds; wins over ``total_steps``.
        warmup_steps (int): Steps of linear warm-up. Default 0.
        final_factor (float): Final fraction of the base rate. Default 0.0.
        last_epoch (int): As for every PyTorch scheduler. Default -1.

    Example:
        >>> import torch
        >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        >>> sched = WarmupCosine(opt, total_steps=10, warmup_steps=2)
        >>> for _ in range(6):
        ...     opt.step(); sched.step()
        >>> round(opt.param_groups[0]["lr"], 3)
        0.5
    """

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: int | None = None,
        budget_s: float | None = None,
        warmup_steps: int = 0,
        final_factor: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        if budget_s is None and not (total_steps and total_steps > 0):
            raise ValueError(f"give total_steps > 0 or budget_s, got {total_steps!r}, {budget_s!r}")
        if budget_s is not None and not budget_s > 0:
            raise ValueError(f"budget_s must be > 0, got {budget_s!r}")
        if warmup_steps < 0 or not 0 <= final_factor <= 1:
            raise ValueError(
                f"warmup_steps must be >= 0 and final_factor in [0, 1], got {warmup_steps}, "
                f"{final_factor}"
            )
        self.total_steps, self.budget_s = total_steps, budget_s
        self.warmup_steps, self.final_factor = int(warmup_steps), float(final_factor)
        self.elapsed = 0.0
        self._last: float | None = None
        super().__init__(optimizer, last_epoch)

    def step(self, epoch: int | None = None) -> None:
        now = time.perf_counter()
        if self._last is not None:
            self.elapsed += now - self._last
        self._last = now
        super().step(epoch)

    def progress(self) -> float:
        """Fraction of the decay phase done, in [0, 1]."""
        if self.budget_s is not None:
            return min(self.elapsed / self.budget_s, 1.0)
        done = self.last_epoch - self.warmup_steps
        return min(max(done / max(self.total_steps - self.warmup_steps, 1), 0.0), 1.0)

    def get_lr(self) -> list[float]:
        step = self.last_epoch
        if step < self.warmup_steps:
            factor = (step + 1) / self.warmup_steps
        else:
            cos = 0.5 * (1 + math.cos(math.pi * self.progress()))
            factor = self.final_factor + (1 - self.final_factor) * cos
        return [base * factor for base in self.base_lrs]

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.pop("_last", None)  # a clock reading means nothing in another process
        return state
