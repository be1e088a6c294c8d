"""Per-sample ``(t x t)`` algebra where it is cheapest: NumPy views of CPU tensors.

Quasi-Newton solvers do a few dozen operations per step on tiny ``(B, t, t)`` arrays. A
PyTorch CPU operation costs 4-20 us however small its input (a batched matrix product
dispatches every sample separately), while NumPy's cost about 1 us, so on the CPU that
algebra runs on NumPy views that share memory with the solver's tensors: on the
``B=16, D=8192`` benchmark it took Broyden's per-step bookkeeping from 0.46 ms to about
0.2 ms. On accelerators the tensors are used as they are, so nothing leaves the device.

The algebra is written once, with operators (``@``, ``*``, indexing, ``.sum(axis=...)``,
``.mT``) that NumPy arrays and tensors share, plus :func:`where`, inside :func:`quiet` (a
sample whose ``f`` blew up carries inf/NaN, which PyTorch passes on silently and NumPy would
warn about; the solver's monitoring reports it in ``info['nonfinite']``).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import Tensor

try:
    import numpy as np
except ImportError:  # pragma: no cover - torch runs without NumPy; so does this module
    np = None


def host(tensor: Tensor) -> Any:
    """A NumPy view of a CPU tensor (shared memory), else the tensor itself."""
    if np is not None and tensor.device.type == "cpu" and not tensor.requires_grad:
        return tensor.numpy()
    return tensor


def as_tensor(array: Any) -> Tensor:
    """The tensor behind :func:`host`'s result (no copy)."""
    return torch.from_numpy(array) if np is not None and isinstance(array, np.ndarray) else array


def where(condition: Any, x: Any, y: Any) -> Any:
    """``torch.where`` or ``numpy.where``, whichever fits ``condition``."""
    if np is not None and isinstance(condition, np.ndarray):
        return np.where(condition, x, y)
    return torch.where(condition, x, y)


def quiet() -> contextlib.AbstractContextManager:
    """Silences NumPy's floating-point warnings, as PyTorch is silent on inf/NaN."""
    return np.errstate(all="ignore") if np is not None else contextlib.nullcontext()
