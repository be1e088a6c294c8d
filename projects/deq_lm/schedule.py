"""A wall-clock learning-rate schedule: linear warm-up in steps, then cosine decay in seconds.

A model trained for a time budget takes as many steps as the machine allows, which a step
schedule cannot know in advance; this one reaches its final rate when the budget is spent,
whatever the step count, so models of different speed compared at the same wall clock each get
a full schedule. (Step-based runs use :class:`deqzoo.optim.WarmupCosineLR`; deqzoo's
:class:`deqzoo.optim.WallClockExponentialLR` decays exponentially and has no warm-up, which a
post-LayerNorm transformer needs.)
"""

from __future__ import annotations

import math

from torch.optim import Optimizer

from deqzoo.optim import WallClockLR

__all__ = ["WallClockWarmupCosine"]


class WallClockWarmupCosine(WallClockLR):
    """Linear warm-up over ``warmup_steps`` optimiser steps, then cosine decay to
    ``final_factor * base_lr`` when ``budget_s`` seconds of wall clock (validation included)
    have passed since the first step. Step it per optimiser step.

    Args:
        optimizer (Optimizer): The optimiser.
        budget_s (float): Length of the run in seconds (keep it equal to trainer.max_time).
        warmup_steps (int): Steps of linear warm-up. Default 0.
        final_factor (float): Final fraction of the base rate. Default 0.0.
        last_epoch (int): As for every PyTorch scheduler. Default -1.

    Example:
        >>> import torch
        >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        >>> sched = WallClockWarmupCosine(opt, budget_s=1e-9, warmup_steps=2, final_factor=0.1)
        >>> for _ in range(3):
        ...     opt.step(); sched.step()
        >>> round(opt.param_groups[0]["lr"], 3)
        0.1
    """

    def __init__(
        self,
        optimizer: Optimizer,
        budget_s: float,
        warmup_steps: int = 0,
        final_factor: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        if warmup_steps < 0 or not 0 <= final_factor <= 1:
            raise ValueError(
                f"warmup_steps must be >= 0 and final_factor in [0, 1], got {warmup_steps}, "
                f"{final_factor}"
            )
        self.warmup_steps, self.final_factor = int(warmup_steps), float(final_factor)
        super().__init__(optimizer, budget_s, last_epoch)

    def get_lr(self) -> list[float]:
        if self.last_epoch < self.warmup_steps:
            factor = (self.last_epoch + 1) / self.warmup_steps
        else:
            cos = 0.5 * (1 + math.cos(math.pi * self.progress))
            factor = self.final_factor + (1 - self.final_factor) * cos
        return [base * factor for base in self.base_lrs]
