"""Flatten the states of multi-equilibrium systems into one (B, D) tensor and back.

Solvers see one tensor. A single tensor state passes through untouched (a conv cell keeps its
(B, C, H, W) layout); a tuple or list of tensors of different shapes, e.g. the resolution branches
of a multiscale DEQ, is flattened per sample and concatenated once at the API boundary.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

State = torch.Tensor | Sequence[torch.Tensor]


class StatePacker:
    """Packs a state (a tensor, or a tuple/list of tensors sharing the batch size) to one tensor.

    Args:
        z_init (Tensor or tuple/list of Tensors): A state that fixes the structure.

    Raises:
        TypeError: If the state is not a tensor or a non-empty sequence of tensors.
        ValueError: If the tensors of a sequence disagree on batch size, dtype or device.

    Example:
        >>> p = StatePacker((torch.zeros(2, 3), torch.zeros(2, 4, 5)))
        >>> p.pack((torch.zeros(2, 3), torch.ones(2, 4, 5))).shape
        torch.Size([2, 23])
    """

    def __init__(self, z_init: State):
        self.is_tensor = torch.is_tensor(z_init)
        if self.is_tensor:
            return
        if not isinstance(z_init, (tuple, list)) or not z_init:
            raise TypeError(
                f"a DEQ state must be a tensor or a non-empty tuple/list of tensors, got "
                f"{type(z_init).__name__}"
            )
        if not all(torch.is_tensor(z) and z.dim() >= 1 for z in z_init):
            kinds = [
                type(z).__name__ if not torch.is_tensor(z) else f"{z.dim()}-d tensor"
                for z in z_init
            ]
            raise TypeError(
                f"every element of a tuple state must be a tensor of shape (B, ...), got {kinds}"
            )
        ref = z_init[0]
        for i, z in enumerate(z_init):
            if z.shape[0] != ref.shape[0] or z.dtype != ref.dtype or z.device != ref.device:
                raise ValueError(
                    f"state element {i} has batch/dtype/device ({z.shape[0]}, {z.dtype}, "
                    f"{z.device}) but element 0 has ({ref.shape[0]}, {ref.dtype}, {ref.device})"
                )
        self.container = type(z_init)
        self.shapes = [tuple(z.shape[1:]) for z in z_init]
        self.sizes = [z[0].numel() for z in z_init]

    def pack(self, z: State) -> torch.Tensor:
        if self.is_tensor:
            return z
        return torch.cat([zi.reshape(zi.shape[0], -1) for zi in z], dim=1)

    def unpack(self, z: torch.Tensor) -> State:
        if self.is_tensor:
            return z
        parts = torch.split(z, self.sizes, dim=1)
        return self.container(p.reshape(z.shape[0], *s) for p, s in zip(parts, self.shapes))

    def wrap(self, func: Callable) -> Callable[[torch.Tensor], torch.Tensor]:
        """Returns ``func`` as a map of packed states, checking its output structure."""
        if self.is_tensor:
            return func

        def packed_func(z: torch.Tensor) -> torch.Tensor:
            out = func(*self.unpack(z))
            if not isinstance(out, (tuple, list)) or len(out) != len(self.shapes):
                raise ValueError(
                    f"f must return a tuple/list of {len(self.shapes)} tensors like its input, got "
                    f"{type(out).__name__} of length {len(out) if hasattr(out, '__len__') else '-'}"
                )
            for i, (o, s) in enumerate(zip(out, self.shapes)):
                if tuple(o.shape[1:]) != s or o.shape[0] != z.shape[0]:
                    raise ValueError(
                        f"f returned element {i} of shape {tuple(o.shape)}, but the state has "
                        "shape "
                        f"{(z.shape[0], *s)}"
                    )
            return self.pack(out)

        return packed_func
