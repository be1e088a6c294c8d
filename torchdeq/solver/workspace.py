"""Solver history buffers that outlive one solve, so CPU solves do not fault in fresh pages.

Anderson and Broyden keep ``B x m x D`` (or ``B x max_iter x D``) histories. On the CPU a
buffer that large comes straight from the operating system on every allocation (glibc serves
it with ``mmap`` and returns it on free), so each solve paid for zero-filled page faults over
its whole history: about 3 ms per solve on the 3 MiB history of the conv benchmark, 5% of the
time of its 30 calls of ``f``. A DEQ solves the same shapes again and again, so the solvers
borrow their histories from here and give them back at the end of the solve; the next solve
of the same size reuses the warm pages.

On accelerators PyTorch's caching allocator already does this, so buffers there are plain
allocations. At most :data:`MAX_KEPT` buffers and :data:`MAX_IDLE_BYTES` are kept (the least
recently returned go first); :func:`release` drops them all. Larger histories are not kept:
their page faults are a small part of the passes a solve makes over them. A buffer is lent to
one solve at a time, so nested or concurrent solves get their own.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import torch
from torch import Tensor

#: How many idle buffers are kept at most.
MAX_KEPT = 4
#: How much memory idle buffers may hold, in bytes.
MAX_IDLE_BYTES = 256 * 2**20

_idle: OrderedDict[tuple, list[Tensor]] = OrderedDict()
_lock = threading.Lock()


def _key(shape: tuple[int, ...], dtype: torch.dtype) -> tuple:
    return (tuple(shape), dtype)


def borrow(shape: tuple[int, ...], like: Tensor) -> Tensor:
    """An uninitialised buffer of ``shape`` with the dtype and device of ``like``.

    Args:
        shape (tuple[int, ...]): The buffer's shape.
        like (torch.Tensor): Gives the dtype and device.

    Returns:
        torch.Tensor: A buffer to pass to :func:`give_back` when the solve ends.
    """
    if like.device.type == "cpu":
        with _lock:
            kept = _idle.get(_key(shape, like.dtype))
            if kept:
                return kept.pop()
    return torch.empty(shape, dtype=like.dtype, device=like.device)


def give_back(buffer: Tensor) -> None:
    """Returns a buffer from :func:`borrow`; it must not be used afterwards."""
    if buffer.device.type != "cpu" or _nbytes(buffer) > MAX_IDLE_BYTES:
        return
    key = _key(buffer.shape, buffer.dtype)
    with _lock:
        _idle.setdefault(key, []).append(buffer)
        _idle.move_to_end(key)
        kept = [b for bs in _idle.values() for b in bs]
        count, size = len(kept), sum(map(_nbytes, kept))
        while count > MAX_KEPT or size > MAX_IDLE_BYTES:
            oldest = next(iter(_idle))
            size -= _nbytes(_idle[oldest].pop(0))
            count -= 1
            if not _idle[oldest]:
                del _idle[oldest]


def release() -> None:
    """Frees every idle buffer (for instance before a memory-hungry phase on the CPU)."""
    with _lock:
        _idle.clear()


def idle_bytes() -> int:
    """The memory held by idle buffers, in bytes."""
    with _lock:
        return sum(_nbytes(b) for kept in _idle.values() for b in kept)


def _nbytes(buffer: Tensor) -> int:
    return buffer.numel() * buffer.element_size()
