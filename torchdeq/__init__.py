"""TorchDEQ: a library for Deep Equilibrium Models in PyTorch.

The one-call interface::

    deq = get_deq(f_solver='anderson', f_max_iter=30, ift=True)
    apply_norm(cell, 'weight_norm')
    z_out, info = deq(lambda z: cell(z, x), z0)

References:
    Geng, Kolter, "TorchDEQ: A Library for Deep Equilibrium Models", 2023 (arXiv 2310.18605).
"""

from torchdeq.core import DEQBase, DEQIndexing, DEQSliced, get_deq, register_deq, reset_deq
from torchdeq.dropout import reset_dropout
from torchdeq.grad import backward_factory
from torchdeq.loss import fp_correction, jac_reg, power_method
from torchdeq.norm import apply_norm, register_norm, register_norm_module, remove_norm, reset_norm
from torchdeq.reversible import ReversibleDEQ  # registers core='reversible'
from torchdeq.solver import get_solver, register_solver
from torchdeq.utils import DEQConfig, add_deq_args, mem_gc, mixed_init

__version__ = "0.2.0"

__all__ = [
    "DEQBase",
    "DEQConfig",
    "DEQIndexing",
    "DEQSliced",
    "ReversibleDEQ",
    "add_deq_args",
    "apply_norm",
    "backward_factory",
    "fp_correction",
    "get_deq",
    "get_solver",
    "jac_reg",
    "mem_gc",
    "mixed_init",
    "power_method",
    "register_deq",
    "register_norm",
    "register_norm_module",
    "register_solver",
    "remove_norm",
    "reset_deq",
    "reset_dropout",
    "reset_norm",
]
