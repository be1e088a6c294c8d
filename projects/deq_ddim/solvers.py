"""A solver for block-triangular systems: Anderson mixing with one set of weights per block.

The joint DDIM system is strictly block-lower-triangular: step ``k`` of the chain depends only
on the steps before it. Plain Anderson acceleration chooses one set of mixing weights for the
whole state, so the residuals of late, still-moving timesteps steer the update of early ones
that have already settled (and the other way round). Triangular Anderson gives block ``k`` the
weights that minimise the residual of blocks ``0 .. k`` only, the part of the system block
``k`` depends on, in the spirit of ParaTAA (Tang et al., "Accelerating Parallel Sampling of
Diffusion Models", ICML 2024, arXiv 2402.09970), whose triangular Anderson acceleration
exploits the same structure. The Gram matrices of all prefixes come from one cumulative sum
over the blocks' Gram matrices, so a step costs about what plain Anderson's does, plus ``T``
small solves per sample.

:func:`triangular_anderson` runs through torchdeq's shared solver loop (stopping, best
iterates, per-sample statistics); torchdeq's DEQ takes it as a solver function
(``get_deq(f_solver=triangular_anderson)``, with ``blocks`` per call). It is not registered
under a name: registering at import would change the library's registry for everyone who
imports the project.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor

from torchdeq.solver.loop import FlatMap, UpdateRule, solve
from torchdeq.solver.options import strict_options
from torchdeq.utils.checks import check_int, check_real
from torchdeq.solver.stat import SolverStat

__all__ = ["TriangularAndersonMixing", "triangular_anderson"]


class TriangularAndersonMixing(UpdateRule):
    """Anderson mixing whose weights for block ``k`` minimise the residual of blocks ``<= k``.

    Args:
        m (int): History size.
        lam (float): Relative regularisation of each block's Gram matrix (its diagonal is
            scaled by ``1 + lam``).
        blocks (int): Number of equal blocks the flattened state splits into.
    """

    def __init__(self, m: int, lam: float, blocks: int):
        self.m, self.lam, self.blocks = m, lam, blocks

    def start(self, fn: FlatMap, z0: Tensor, max_iter: int) -> None:
        batch, dim = z0.shape
        if dim % self.blocks:
            raise ValueError(f"state size {dim} does not split into {self.blocks} equal blocks")
        self.size = min(self.m, max_iter)
        shape = (batch, self.size, self.blocks, dim // self.blocks)
        self.res = z0.new_zeros(shape)
        self.mix = z0.new_zeros(shape)
        self.g = z0.new_empty(z0.shape)

    def step(self, k: int, z: Tensor, fz: Tensor, g: Tensor) -> tuple[Tensor, None]:
        slot, n = (k - 1) % self.size, min(k, self.size)
        B = z.shape[0]
        self.res[:, slot] = g.view(B, self.blocks, -1)
        self.mix[:, slot] = fz.view(B, self.blocks, -1)
        if n == 1:
            return fz.clone(), None
        res = self.res[:, :n]
        # per-block Gram matrices (B, T, n, n), then those of every prefix of blocks
        gram = torch.einsum("bitd,bjtd->btij", res, res).cumsum(dim=1)
        diag = torch.diagonal(gram, dim1=-2, dim2=-1)
        floor = 1e-30 + 1e-12 * diag.amax(-1, keepdim=True)
        system = gram + torch.diag_embed(self.lam * diag + floor)
        ones = system.new_ones(*system.shape[:-1], 1)
        y = torch.linalg.solve_ex(system, ones, check_errors=False)[0][..., 0]
        alpha = y / y.sum(-1, keepdim=True)  # (B, T, n)
        out = torch.einsum("bti,bitd->btd", alpha, self.mix[:, :n])
        return out.reshape(z.shape), None


@strict_options
def triangular_anderson(
    func: Callable[[Tensor], Tensor],
    x0: Tensor,
    max_iter: int = 50,
    tol: float = 1e-3,
    stop_mode: Literal["abs", "rel"] = "abs",
    indexing: list[int] | None = None,
    m: int = 6,
    lam: float = 1e-4,
    blocks: int = 1,
    return_final: bool = False,
    **kwargs: Any,
) -> tuple[Tensor, list[Tensor], SolverStat]:
    """Triangular Anderson acceleration for block-lower-triangular fixed-point systems.

    Args:
        func (callable): The map ``f``; the flattened state (per sample) is ``blocks`` equal
            blocks in the order of the triangle (block ``k`` depends on blocks ``< k``).
        x0 (torch.Tensor): Initial estimate ``(B, ...)``.
        max_iter (int): Maximum number of calls of ``func``. Default 50.
        tol (float): Per-sample stopping threshold on the lowest residual. Default 1e-3.
        stop_mode (str): ``'abs'`` or ``'rel'``. Default ``'abs'``.
        indexing (list, optional): Steps whose iterates to return.
        m (int): History size. Default 6.
        lam (float): Relative regularisation of the Gram matrices. Default 1e-4.
        blocks (int): Number of blocks (1: plain Anderson). Default 1.
        return_final (bool): Return the last iterate instead of the best. Default False.
        **kwargs: Unknown options are rejected.

    Returns:
        tuple[torch.Tensor, list[torch.Tensor], SolverStat]: As every torchdeq solver.

    Example:
        >>> A = torch.tensor([[0.0, 0.0], [0.9, 0.0]])  # block-lower-triangular, nilpotent
        >>> f = lambda z: torch.tanh(z @ A.T + 1)
        >>> z, _, info = triangular_anderson(f, torch.zeros(1, 2), blocks=2, tol=1e-6)
        >>> torch.allclose(z, f(z), atol=1e-5)
        True
    """
    m = check_int("triangular_anderson", "m", m, 1)
    blocks = check_int("triangular_anderson", "blocks", blocks, 1)
    lam = check_real("triangular_anderson", "lam", lam, low=0.0)
    return solve(
        func,
        x0,
        TriangularAndersonMixing(m, lam, blocks),
        where="triangular_anderson",
        max_iter=max_iter,
        tol=tol,
        stop_mode=stop_mode,
        indexing=indexing,
        return_final=return_final,
    )

