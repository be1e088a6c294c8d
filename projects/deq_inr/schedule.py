"""A learning-rate schedule that decays with wall-clock time rather than with steps.

A representation trained for a fixed time budget (say 10 minutes) takes as many steps as the
machine allows, which a step-based schedule cannot know in advance: on a busy machine it would
stop before its learning rate has come down. This one reaches its final rate when the budget
is spent, whatever the step count.
"""

from __future__ import annotations

import time
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

__all__ = ["WallClockExponentialLR"]


class WallClockExponentialLR(LRScheduler):
    """``lr = base_lr * final_factor ** min(elapsed / budget_s, 1)``, stepped per optimiser step.

    ``elapsed`` is the wall-clock time between the scheduler's creation and its last step, so
    it counts everything the run does meanwhile (validation included). A resumed run goes on
    from the saved ``elapsed``; the time it was stopped does not count.

    Args:
        optimizer (Optimizer): The optimiser.
        budget_s (float, optional): Seconds over which the rate decays. Default 600.
        final_factor (float, optional): The rate's final fraction of its initial value.
            Default 0.1.
        last_epoch (int, optional): As for every PyTorch scheduler. Default -1.

    Raises:
        ValueError: For a non-positive budget or factor.

    Example:
        >>> import torch
        >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        >>> sched = WallClockExponentialLR(opt, budget_s=1e-9, final_factor=0.5)
        >>> opt.step(); sched.step()
        >>> opt.param_groups[0]["lr"]
        0.5
    """

    def __init__(
        self,
        optimizer: Optimizer,
        budget_s: float = 600.0,
        final_factor: float = 0.1,
        last_epoch: int = -1,
    ) -> None:
        if not budget_s > 0:
            raise ValueError(f"budget_s must be > 0, got {budget_s!r}")
        if not final_factor > 0:
            raise ValueError(f"final_factor must be > 0, got {final_factor!r}")
        self.budget_s = float(budget_s)
        self.final_factor = float(final_factor)
        self.elapsed = 0.0
        self._last: float | None = None
        super().__init__(optimizer, last_epoch)

    def step(self, epoch: int | None = None) -> None:
        now = time.perf_counter()
        if self._last is not None:
            self.elapsed += now - self._last
        self._last = now
        super().step(epoch)

    def get_lr(self) -> list[float]:
        frac = min(self.elapsed / self.budget_s, 1.0)
        return [base * self.final_factor**frac for base in self.base_lrs]

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        # A clock reading means nothing in another process.
        state.pop("_last", None)
        return state
