"""The one solver loop: stopping, per-sample best iterates, traces and ``indexing``.

A solver supplies only an :class:`UpdateRule` (how to move from one iterate to the next);
:func:`solve` owns everything else, so all solvers share one meaning of ``tol``, ``stop_mode``,
``indexing``, ``return_final``, ``nstep`` and the statistics.

Conventions. The iterate after ``j`` steps is ``z_j`` (``z_0 = x0``). Step ``k`` evaluates
``f(z_{k-1})``, which both measures the residual of ``z_{k-1}`` and feeds the update that
produces ``z_k``; so ``max_iter`` steps cost ``max_iter`` calls of ``f`` (NFE) and measure the
residuals of ``z_0 ... z_{max_iter-1}``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from torchdeq.solver import workspace
from torchdeq.solver.stat import REL_EPS, SRADIUS_NOT_COMPUTED, SolverStat
from torchdeq.solver.tracking import INF, make_tracker
from torchdeq.utils.checks import check_indexing, check_int, check_real, check_stop_mode

_HALF = (torch.float16, torch.bfloat16)


class FlatMap:
    """Calls ``func`` on ``(B, D)`` iterates in the user's shape and dtype, checking its output.

    Args:
        func (callable): The map ``f``, called with tensors shaped and typed like ``x0``.
        x0 (torch.Tensor): The initial guess.
        where (str): The solver's name, for error messages.
    """

    def __init__(self, func: Callable[[Tensor], Tensor], x0: Tensor, where: str):
        self.func = func
        self.shape = x0.shape
        self.dtype = x0.dtype
        self.cast = work_dtype(x0.dtype) != x0.dtype
        self.reshape = x0.dim() != 2  # (B, D) iterates are already in the user's shape
        self.flat_shape = (x0.shape[0] if x0.dim() else 1, -1)
        self.where = where
        # The solve runs with autocast off (its Gram rows and norms stay in the work dtype);
        # f runs under the caller's autocast, if any.
        self.device_type = x0.device.type
        autocast = torch.is_autocast_enabled(self.device_type)
        self.autocast_dtype = torch.get_autocast_dtype(self.device_type) if autocast else None

    def __call__(self, z: Tensor) -> Tensor:
        if self.reshape:
            z = z.view(self.shape)
        work = z.dtype
        z = z.to(self.dtype) if self.cast else z
        if self.autocast_dtype is None:
            out = self.func(z)
        else:
            with torch.autocast(self.device_type, dtype=self.autocast_dtype):
                out = self.func(z)
        if not isinstance(out, Tensor):
            raise TypeError(f"{self.where}: f must return a tensor, got {type(out).__name__}")
        if out.shape != self.shape:
            raise ValueError(
                f"{self.where}: f(z) has shape {tuple(out.shape)} but z has shape "
                f"{tuple(self.shape)}; a fixed point needs f to preserve the shape"
            )
        # a map that enables grad inside must not make the solver keep its graph
        if out.requires_grad:
            out = out.detach()
        if self.reshape:
            out = out.reshape(self.flat_shape)
        # the solver works in one dtype: a half-precision f(z) (half inputs, or autocast
        # inside f) is promoted to it
        return out if out.dtype == work else out.to(work)


class UpdateRule:
    """How a solver moves: the only part that differs between solvers.

    The loop calls :meth:`start` once, then at every step :meth:`residual` and :meth:`step`,
    and :meth:`finish` when the solve ends (also on an error). Returned iterates must be new
    tensors (the loop keeps references to them as best iterates and states), and neither
    ``z`` nor ``fz`` may be changed in place.
    """

    def start(self, fn: FlatMap, z0: Tensor, max_iter: int) -> None:
        """Allocates buffers for a solve of ``z0`` (``(B, D)``) in ``max_iter`` steps."""
        self.g = self.borrow(z0.shape, z0)

    def borrow(self, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """A scratch buffer from :mod:`~torchdeq.solver.workspace`, returned by :meth:`finish`."""
        buffer = workspace.borrow(shape, like)
        self.__dict__.setdefault("_borrowed", []).append(buffer)
        return buffer

    def finish(self) -> None:
        """Gives the buffers from :meth:`borrow` back; the rule is not used afterwards."""
        for buffer in self.__dict__.pop("_borrowed", []):
            workspace.give_back(buffer)

    def residual(self, k: int, z: Tensor, fz: Tensor) -> tuple[Tensor, Tensor | None]:
        """Returns ``g = f(z) - z`` for step ``k`` and, if the rule gets it for free,
        ``||g||^2`` per sample (else None).

        ``g`` lives until the next call; rules that need it longer keep their own copy.
        """
        return torch.sub(fz, z, out=self.g), None

    def step(self, k: int, z: Tensor, fz: Tensor, g: Tensor) -> tuple[Tensor, Tensor | None]:
        """Returns ``z_k`` from ``z = z_{k-1}``, ``fz = f(z)`` and ``g = fz - z``.

        The second item is ``f(z_k)`` when the rule had to evaluate it (a line search), so
        the loop need not call ``f`` again; otherwise None.
        """
        raise NotImplementedError


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of solver arithmetic: half types are promoted to float32 for accuracy."""
    if not dtype.is_floating_point:
        raise TypeError(f"x0 must be a floating-point tensor, got dtype {dtype}")
    return torch.float32 if dtype in _HALF else dtype


def flatten(x0: Tensor) -> Tensor:
    """``x0`` as ``(B, D)`` in the work dtype: 0-d is one sample, ``(B,)`` is B scalars."""
    batch = x0.shape[0] if x0.dim() > 0 else 1
    return x0.detach().reshape(batch, -1).to(work_dtype(x0.dtype))


def solve(
    func: Callable[[Tensor], Tensor],
    x0: Tensor,
    rule: UpdateRule,
    *,
    where: str,
    max_iter: int,
    tol: float | None,
    stop_mode: Literal["abs", "rel"],
    indexing: list[int] | None,
    return_final: bool,
) -> tuple[Tensor, list[Tensor], SolverStat]:
    """Runs ``rule`` from ``x0`` with residual monitoring and per-sample best iterates.

    Each sample keeps the iterate with its lowest residual in ``stop_mode``; a sample whose
    lowest residual is below ``tol`` is finished (its best iterate and ``nstep`` stay fixed)
    and the solve stops when every sample is finished or has produced NaN/Inf. ``tol <= 0``
    or None, or ``return_final=True``, runs all ``max_iter`` steps without reading anything
    back to the host (on the CPU, where reads are free, it still skips needless copies).

    Args:
        func (callable): The map ``f``; must preserve the shape of ``x0``.
        x0 (torch.Tensor): Initial guess ``(B, ...)``; 0-d is one sample, ``(B,)`` B scalars.
        rule (UpdateRule): The solver's update rule.
        where (str): The solver's name, for error messages.
        max_iter (int): Number of steps (calls of ``f``); 0 returns ``x0``.
        tol (float | None): Per-sample stopping threshold on the lowest residual.
        stop_mode (str): ``'abs'`` or ``'rel'``: the residual that ranks iterates.
        indexing (list[int] | None): Steps whose iterates to return, in the given order.
        return_final (bool): Return the last iterate instead of the best one.

    Returns:
        tuple[torch.Tensor, list[torch.Tensor], SolverStat]: ``z_star`` shaped like ``x0``,
        the iterates at ``indexing`` (``z_star`` for steps the solve did not reach) and the
        statistics.

    Raises:
        OptionError: For an invalid ``max_iter``, ``tol``, ``stop_mode`` or ``indexing``.
        ValueError: If ``f(z)`` does not have the shape of ``z``.
    """
    max_iter = check_int(where, "max_iter", max_iter, 0)
    tol = 0.0 if tol is None else check_real(where, "tol", tol)
    stop_mode = check_stop_mode(stop_mode)
    wanted = check_indexing(where, indexing)
    run = _Run(func, x0, rule, where, max_iter, tol, stop_mode, wanted, return_final)
    with torch.no_grad(), torch.autocast(x0.device.type, enabled=False):
        return run.go()


class _Run:
    """The state of one monitored solve (a class so the bookkeeping reads in small steps)."""

    def __init__(self, func, x0, rule, where, max_iter, tol, stop_mode, wanted, return_final):
        self.x0 = x0
        self.rule = rule
        self.max_iter = max_iter
        self.rel = stop_mode == "rel"
        self.tol = tol
        self.wanted = wanted
        self.return_final = bool(return_final)
        self.fn = FlatMap(func, x0, where)
        self.z0 = flatten(x0)
        self.abs_rows, self.fnorm_rows = [], []  # per-step residuals and ||f(z)||
        # early stopping reads one flag per step; without it the loop never syncs
        self.early_stop = tol > 0 and not self.return_final
        self.tracker = make_tracker(self.z0, tol, self.early_stop)

    def go(self) -> tuple[Tensor, list[Tensor], SolverStat]:
        z = self.z0
        states = {}
        fz_next = None
        steps = 0
        last_needed = self.return_final or self.max_iter in self.wanted
        if self.max_iter > 0:
            self.rule.start(self.fn, z, self.max_iter)
        try:
            for k in range(1, self.max_iter + 1):
                fz = self.fn(z) if fz_next is None else fz_next
                g, g_sq = self.rule.residual(k, z, fz)
                self.tracker.observe(k, self._measure(g, g_sq, fz), z)
                steps = k
                if k < self.max_iter or last_needed:
                    z, fz_next = self.rule.step(k, z, fz, g)
                    if k in self.wanted:
                        states[k] = z
                if self.early_stop and self.tracker.finished():
                    break
        finally:
            self.rule.finish()
        return self._result(z, states, steps)

    def _measure(self, g: Tensor, g_sq: Tensor | None, fz: Tensor) -> Tensor:
        """Records the residuals of ``z_{k-1}``; returns them in the stopping mode."""
        res = torch.linalg.vector_norm(g, dim=1) if g_sq is None else g_sq.sqrt()
        fnorm = torch.linalg.vector_norm(fz, dim=1)
        self.abs_rows.append(res)
        self.fnorm_rows.append(fnorm)
        return res / (fnorm + REL_EPS) if self.rel else res

    def _result(self, z, states, steps) -> tuple[Tensor, list[Tensor], SolverStat]:
        lowest, nstep = self.tracker.summary(self.z0)
        if steps:
            # one stack of (B,) rows along dim 0 is much cheaper than two along dim 1
            traces = torch.stack(self.abs_rows + self.fnorm_rows).view(2, steps, -1).mT
            abs_trace = traces[0].contiguous()
            rel_trace = abs_trace / (traces[1] + REL_EPS)
            found = torch.isfinite(lowest)
            abs_lowest = torch.where(found, abs_trace.gather(1, nstep[:, None])[:, 0], INF)
            rel_lowest = torch.where(found, rel_trace.gather(1, nstep[:, None])[:, 0], INF)
        else:
            abs_trace = rel_trace = lowest.new_empty(lowest.shape[0], 0)
            abs_lowest, rel_lowest = lowest, lowest.clone()
        nonfinite = ~torch.isfinite(abs_trace).all(dim=1)
        best = self.tracker.best
        if self.return_final:
            # a sample that blew up still returns its best finite iterate
            z_star = torch.where(nonfinite[:, None], best, z)
            nstep = torch.where(nonfinite, nstep, steps)
        else:
            z_star = best
        stat = SolverStat(
            abs_lowest=abs_lowest,
            rel_lowest=rel_lowest,
            abs_trace=abs_trace,
            rel_trace=rel_trace,
            nstep=nstep.to(lowest.dtype),
            nonfinite=nonfinite,
            converged=torch.isfinite(lowest) & (lowest <= self.tol),
            sradius=torch.full_like(abs_lowest, SRADIUS_NOT_COMPUTED),
        )
        z_star = self._unflatten(z_star)
        return z_star, [self._unflatten(states.get(j), z_star) for j in self.wanted], stat

    def _unflatten(self, z: Tensor | None, default: Tensor | None = None) -> Tensor:
        if z is None:
            return default
        out = z.view(self.x0.shape).to(self.x0.dtype)
        # never hand back the caller's own tensor
        return out.clone() if out.data_ptr() == self.x0.data_ptr() else out


def iterate(
    func: Callable[[Tensor], Tensor],
    x0: Tensor,
    rule: UpdateRule,
    *,
    where: str,
    max_iter: int,
    indexing: list[int] | None,
) -> tuple[Tensor, list[Tensor]]:
    """Runs exactly ``max_iter`` steps of ``rule`` without any monitoring.

    Args:
        func (callable): The map ``f``; must preserve the shape of ``x0``.
        x0 (torch.Tensor): Initial guess.
        rule (UpdateRule): The update rule; its ``step`` receives ``g=None``.
        where (str): The solver's name, for error messages.
        max_iter (int): Number of steps.
        indexing (list[int] | None): Steps whose iterates to return.

    Returns:
        tuple[torch.Tensor, list[torch.Tensor]]: The last iterate and the requested ones.
    """
    max_iter = check_int(where, "max_iter", max_iter, 0)
    wanted = check_indexing(where, indexing)
    with torch.no_grad():
        fn = FlatMap(func, x0, where)
        z = flatten(x0)
        states = {}
        if max_iter > 0:
            rule.start(fn, z, max_iter)
        try:
            for k in range(1, max_iter + 1):
                z, _ = rule.step(k, z, fn(z), None)
                if k in wanted:
                    states[k] = z
        finally:
            rule.finish()
        z = z.view(x0.shape).to(x0.dtype)
        z = z.clone() if z.data_ptr() == x0.data_ptr() else z
        return z, [states[j].view(x0.shape).to(x0.dtype) if j in states else z for j in wanted]
