"""The timing harness the benchmark scripts share: wall and process-CPU time of a callable.

``measure(fn)`` warms ``fn`` up, then runs ``rounds`` rounds of ``reps`` calls and reports, for
wall and CPU time separately, the lowest of the per-round medians: the median discards the odd
slow call, the minimum over rounds the rounds in which another process held the core. On a shared
machine the CPU time (``time.process_time``: this process's user + system time, all threads) is
the steadier number, as it does not count waiting for a core. CUDA work is synchronised before
each clock reading, so a GPU call is timed to its end.

``saved_bytes(fn)`` is the size of the tensors autograd saves for the backward pass while ``fn``
runs: the activation memory of a training step.

Scripts import it as ``from timing import measure`` (the script's folder is on ``sys.path``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Timing", "measure", "saved_bytes"]


@dataclass(frozen=True)
class Timing:
    """Milliseconds per call: wall clock and process CPU time."""

    wall_ms: float
    cpu_ms: float

    def __str__(self) -> str:
        return f"{self.wall_ms:.2f} ms wall, {self.cpu_ms:.2f} ms CPU"


def _sync() -> None:
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def measure(fn: Callable[[], object], reps: int = 5, rounds: int = 3, warmup: int = 1) -> Timing:
    """Times ``fn``: the lowest of ``rounds`` per-round medians of ``reps`` calls each.

    Args:
        fn (Callable[[], object]): The work to time.
        reps (int, optional): Calls per round. Default 5.
        rounds (int, optional): Rounds. Default 3.
        warmup (int, optional): Untimed calls first (allocator, kernel selection). Default 1.

    Returns:
        Timing: Milliseconds per call.

    Example:
        >>> t = measure(lambda: sum(range(1000)), reps=3, rounds=2)
        >>> t.wall_ms >= 0 and t.cpu_ms >= 0
        True
    """
    if reps < 1 or rounds < 1 or warmup < 0:
        raise ValueError(
            f"need reps >= 1, rounds >= 1, warmup >= 0; got {reps}, {rounds}, {warmup}"
        )
    for _ in range(warmup):
        fn()
    _sync()
    best_wall = best_cpu = float("inf")
    for _ in range(rounds):
        walls, cpus = [], []
        for _ in range(reps):
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            _sync()
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
        best_wall = min(best_wall, statistics.median(walls))
        best_cpu = min(best_cpu, statistics.median(cpus))
    return Timing(1e3 * best_wall, 1e3 * best_cpu)


def saved_bytes(fn: Callable[[], object], distinct: bool = True) -> int:
    """Bytes of the tensors autograd saves for backward while ``fn`` runs (one call).

    Args:
        fn (Callable[[], object]): Builds (and may run) the graph.
        distinct (bool, optional): Count each storage once (the memory held), rather than
            every saved tensor (the bytes the saved-tensor hooks see). Default True.

    Example:
        >>> import torch
        >>> w = torch.ones(4, 4, requires_grad=True)
        >>> saved_bytes(lambda: (w @ torch.ones(4, 3)).sum().backward()) > 0
        True
    """
    import torch

    storages: dict[int, int] = {}
    total = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        if distinct:
            storage = t.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
        else:
            total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values()) if distinct else total[0]
