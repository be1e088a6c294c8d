"""Optimisation plumbing shared by the projects: parameter groups and learning-rate schedules.

* :func:`decay_groups` splits parameters into a weight-decayed group (weights of convolutions and
  linear maps) and one without decay (biases, norm affines, weight-norm gains).
* :func:`complete_scheduler` builds a partial scheduler, filling in the schedule length it needs
  (``OneCycleLR``'s ``total_steps``, ``CosineAnnealingLR``'s ``T_max``,
  :class:`WarmupCosineLR`'s ``total_steps``) from the trainer.
* :class:`WarmupCosineLR`: linear warm-up, then cosine annealing.
* :class:`WallClockExponentialLR`: a rate that decays with wall-clock time, for runs with a time
  budget rather than a step budget.

:class:`deqzoo.module.DEQLitModule` uses the first two in ``configure_optimizers``; the schedules
are chosen in ``conf/scheduler``.
"""

from __future__ import annotations

import functools
import inspect
import math
import time
from collections.abc import Callable, Iterable
from typing import Any

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

__all__ = [
    "WallClockExponentialLR",
    "WallClockLR",
    "WarmupCosineLR",
    "complete_scheduler",
    "decay_groups",
    "is_no_decay",
]


def is_no_decay(name: str, param: nn.Parameter) -> bool:
    """Whether ``param`` should skip weight decay: biases, norm affines and gains.

    Vectors and scalars (``ndim <= 1``: biases, group/layer-norm affines) and weight-norm gains
    (names ending in ``_g``, of shape ``(out, 1, ...)``) set the scale of a layer; decaying them
    shrinks the layer rather than regularising it.

    Example:
        >>> is_no_decay("conv.bias", nn.Parameter(torch.zeros(3)))
        True
        >>> is_no_decay("conv.weight", nn.Parameter(torch.zeros(3, 3)))
        False
    """
    return param.ndim <= 1 or name.endswith("_g")


def decay_groups(
    named_parameters: Iterable[tuple[str, nn.Parameter]],
    no_decay: Callable[[str, nn.Parameter], bool] = is_no_decay,
) -> list[dict[str, Any]]:
    """Two parameter groups: decayed, and ``weight_decay=0`` for what ``no_decay`` selects.

    The decayed group keeps the optimiser's own ``weight_decay``. Frozen parameters are left
    out; an empty group is dropped.

    Args:
        named_parameters (Iterable[tuple[str, nn.Parameter]]): ``module.named_parameters()``.
        no_decay (Callable[[str, nn.Parameter], bool], optional): The selector. Default
            :func:`is_no_decay`.

    Returns:
        list[dict[str, Any]]: Parameter groups for an optimiser.

    Example:
        >>> groups = decay_groups(nn.Linear(3, 2).named_parameters())
        >>> [len(g["params"]) for g in groups], groups[1]["weight_decay"]
        ([1, 1], 0.0)
    """
    decay, plain = [], []
    for name, param in named_parameters:
        if param.requires_grad:
            (plain if no_decay(name, param) else decay).append(param)
    groups = [{"params": decay}, {"params": plain, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def _partial_parts(factory: Callable[..., Any]) -> tuple[Any, dict[str, Any]]:
    if isinstance(factory, functools.partial):
        return factory.func, dict(factory.keywords)
    return factory, {}


def complete_scheduler(
    factory: Callable[..., Any], optimizer: Optimizer, steps: int | Callable[[], int]
) -> Any:
    """Builds a partial scheduler, filling in the schedule length it needs but was not given.

    The length depends on the data size, batch size and epochs, so the config cannot write it:
    ``total_steps`` (``OneCycleLR`` unless it got ``epochs``, :class:`WarmupCosineLR`) and
    ``T_max`` (``CosineAnnealingLR``) are set to ``steps``, in the unit the scheduler steps in.
    A value given in the config is kept.

    Args:
        factory (Callable[..., Any]): A partial scheduler (``functools.partial``, as Hydra's
            ``_partial_: true`` gives) or any callable taking ``optimizer=``.
        optimizer (Optimizer): The optimiser to schedule.
        steps (int | Callable[[], int]): Scheduler steps of the run (optimiser steps when
            stepping per batch, epochs when stepping per epoch), or a function giving them,
            called only when the scheduler needs them.

    Returns:
        Any: The scheduler.

    Example:
        >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
        >>> factory = functools.partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=0.1)
        >>> complete_scheduler(factory, opt, steps=100).total_steps
        100
    """
    target, given = _partial_parts(factory)
    try:
        accepted = inspect.signature(target).parameters
    except (TypeError, ValueError):
        accepted = {}
    missing = []
    if "total_steps" in accepted and given.get("total_steps") is None and not given.get("epochs"):
        missing.append("total_steps")
    if "T_max" in accepted and given.get("T_max") is None:
        missing.append("T_max")
    extra = {}
    if missing:
        length = steps() if callable(steps) else steps
        extra = dict.fromkeys(missing, max(int(length), 1))
    return factory(optimizer=optimizer, **extra)


class WarmupCosineLR(LRScheduler):
    """Linear warm-up from ``warmup_start * lr`` to ``lr``, then cosine annealing to ``eta_min``.

    ``lr_t = lr * (s + (1 - s) t / w)`` for ``t < w`` warm-up steps, then
    ``eta_min + (lr - eta_min) (1 + cos(pi (t - w) / (T - w))) / 2`` up to ``T = total_steps``
    (Loshchilov and Hutter, SGDR, arXiv 1608.03983; warm-up as in Goyal et al., arXiv
    1706.02677). Past ``T`` the rate stays at ``eta_min``.

    Args:
        optimizer (Optimizer): The optimiser.
        total_steps (int): Length of the schedule (filled by :func:`complete_scheduler`).
        warmup (float | int, optional): Warm-up length: a fraction of ``total_steps`` if < 1,
            else a number of steps. Default 0.05.
        warmup_start (float, optional): The first rate as a fraction of ``lr``. Default 0.0.
        eta_min (float, optional): The final rate. Default 0.0.
        last_epoch (int, optional): As for every PyTorch scheduler. Default -1.

    Raises:
        ValueError: For ``total_steps < 1``, a negative ``warmup`` or one of at least
            ``total_steps`` steps, or ``warmup_start`` outside ``[0, 1]``.

    Example:
        >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        >>> sched = WarmupCosineLR(opt, total_steps=10, warmup=2)
        >>> rates = []
        >>> for _ in range(10):
        ...     rates.append(round(opt.param_groups[0]["lr"], 3)); opt.step(); sched.step()
        >>> rates[:4], rates[-1]
        ([0.0, 0.5, 1.0, 0.962], 0.038)
    """

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: int,
        warmup: float | int = 0.05,
        warmup_start: float = 0.0,
        eta_min: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        if int(total_steps) < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps!r}")
        if warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {warmup!r}")
        steps = int(round(warmup * total_steps)) if warmup < 1 else int(warmup)
        if steps >= int(total_steps):
            raise ValueError(
                f"warmup={warmup!r} is {steps} steps, not fewer than total_steps={total_steps}"
            )
        if not 0.0 <= warmup_start <= 1.0:
            raise ValueError(f"warmup_start must be in [0, 1], got {warmup_start!r}")
        self.total_steps = int(total_steps)
        self.warmup_steps = steps
        self.warmup_start = float(warmup_start)
        self.eta_min = float(eta_min)
        super().__init__(optimizer, last_epoch)

    def factor(self, base: float, t: int) -> float:
        """The rate at step ``t`` for a base rate ``base``."""
        w, s = self.warmup_steps, self.warmup_start
        if t < w:
            return base * (s + (1.0 - s) * t / w)
        progress = min((t - w) / max(self.total_steps - w, 1), 1.0)
        return self.eta_min + (base - self.eta_min) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def get_lr(self) -> list[float]:
        return [self.factor(base, self.last_epoch) for base in self.base_lrs]


class WallClockLR(LRScheduler):
    """Base of schedules over a wall-clock budget: keeps ``elapsed`` and :attr:`progress`.

    ``elapsed`` is the wall-clock time between the scheduler's first and last ``step`` (so it
    counts everything the run does meanwhile, validation included); ``progress`` is
    ``min(elapsed / budget_s, 1)``. A resumed run goes on from the saved ``elapsed``; the time it
    was stopped does not count. Subclasses implement ``get_lr`` from ``progress``.

    Args:
        optimizer (Optimizer): The optimiser.
        budget_s (float): Seconds of the schedule (keep it equal to ``trainer.max_time``).
        last_epoch (int, optional): As for every PyTorch scheduler. Default -1.

    Raises:
        ValueError: For a non-positive budget.
    """

    @staticmethod
    def clock() -> float:
        """The clock the budget is spent on (a subclass may count process CPU time)."""
        return time.perf_counter()

    def __init__(self, optimizer: Optimizer, budget_s: float, last_epoch: int = -1) -> None:
        if not budget_s > 0:
            raise ValueError(f"budget_s must be > 0, got {budget_s!r}")
        self.budget_s = float(budget_s)
        self.elapsed = 0.0
        self._last: float | None = None
        super().__init__(optimizer, last_epoch)

    @property
    def progress(self) -> float:
        """The spent fraction of the budget, at most 1."""
        return min(self.elapsed / self.budget_s, 1.0)

    def step(self, epoch: int | None = None) -> None:
        now = self.clock()
        if self._last is not None:
            self.elapsed += now - self._last
        self._last = now
        super().step(epoch)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.pop("_last", None)  # a clock reading means nothing in another process
        return state


class WallClockExponentialLR(WallClockLR):
    """``lr = base_lr * final_factor ** min(elapsed / budget_s, 1)``, stepped per optimiser step.

    A run trained for a fixed time budget (say 10 minutes) takes as many steps as the machine
    allows, which a step-based schedule cannot know in advance: on a busy machine it would stop
    before its rate has come down. This one reaches its final rate when the budget is spent,
    whatever the step count. ``elapsed`` is the wall-clock time between the scheduler's creation
    and its last step, so it counts everything the run does meanwhile (validation included). A
    resumed run goes on from the saved ``elapsed``; the time it was stopped does not count.

    Args:
        optimizer (Optimizer): The optimiser.
        budget_s (float, optional): Seconds over which the rate decays (keep it equal to
            ``trainer.max_time``). Default 600.
        final_factor (float, optional): The rate's final fraction of its initial value.
            Default 0.1.
        last_epoch (int, optional): As for every PyTorch scheduler. Default -1.

    Raises:
        ValueError: For a non-positive budget or factor.

    Example:
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
        if not final_factor > 0:
            raise ValueError(f"final_factor must be > 0, got {final_factor!r}")
        self.final_factor = float(final_factor)
        super().__init__(optimizer, budget_s, last_epoch)

    def get_lr(self) -> list[float]:
        return [base * self.final_factor**self.progress for base in self.base_lrs]
