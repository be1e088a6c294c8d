"""The statistics record that every solver returns."""

from __future__ import annotations

import torch

from torchdeq.utils.checks import check_stop_mode

#: Every key of a :class:`SolverStat`; every solver and DEQ core fills all of them.
STAT_KEYS = (
    "abs_lowest",
    "rel_lowest",
    "abs_trace",
    "rel_trace",
    "nstep",
    "nonfinite",
    "converged",
    "sradius",
)
#: The value of ``'sradius'`` (per sample) when the spectral radius was not estimated.
SRADIUS_NOT_COMPUTED = -1.0
#: Added to ``||f(z)||`` in the relative residual so that ``f(z) = 0`` gives a finite value.
REL_EPS = 1e-8

_DUMMY_KEYS = ("abs_lowest", "rel_lowest", "abs_trace", "rel_trace", "nstep", "sradius")


class SolverStat(dict):
    """Solver statistics for a batch, queried as dictionary keys.

    Residuals are per sample, over all non-batch dimensions: the absolute residual of an
    iterate ``z`` is ``||f(z) - z||_2`` and the relative one is
    ``||f(z) - z||_2 / (||f(z)||_2 + 1e-8)``.

    Valid keys (every solver and DEQ core returns all of them):

    - ``'abs_lowest'``: absolute residual of each sample's best iterate (the one with the
      lowest residual in the solver's ``stop_mode``), shape ``(B,)``; ``inf`` where no
      residual was finite.
    - ``'rel_lowest'``: relative residual of the same iterate, shape ``(B,)``.
    - ``'abs_trace'``: absolute residuals along the solve, shape ``(B, N)`` where ``N`` is the
      number of steps run; column ``j`` belongs to the iterate after ``j`` steps (column 0 to
      the initial guess).
    - ``'rel_trace'``: relative residuals along the solve, shape ``(B, N)``.
    - ``'nstep'``: number of steps after which the returned iterate was produced, shape
      ``(B,)`` (a float tensor, so it averages directly); ``0`` is the initial guess. With
      ``return_final=True`` it is the number of steps run.
    - ``'nonfinite'``: bool ``(B,)``, True where ``f`` produced NaN or Inf during the solve.
      Such a sample returns its best finite iterate (the initial guess if none).
    - ``'converged'``: bool ``(B,)``, True where the sample's lowest residual in the stop mode
      is at or below ``tol`` (with ``tol`` None or 0: exactly 0).
    - ``'sradius'``: the largest absolute eigenvalue of the Jacobian at the returned iterate,
      estimated by power iteration, shape ``(B,)``. The DEQ cores compute it in eval mode with
      ``sradius_mode=True``; everywhere else it holds the sentinel ``-1`` per sample
      (``SRADIUS_NOT_COMPUTED``).

    Solvers that do not monitor (``simple_fixed_point_iter``) return :meth:`dummy` statistics.

    Example:
        >>> stat = SolverStat(nstep=torch.tensor([3.0]))
        >>> stat['nstep']
        tensor([3.])
    """

    @classmethod
    def dummy(cls, device: torch.device | str | None = None) -> SolverStat:
        """The placeholder of solvers that do not monitor: every number -1 of shape (1, 1).

        Args:
            device (torch.device | str | None): Where the tensors live.

        Returns:
            SolverStat: The residual keys, ``nstep`` and ``sradius``, each ``-1`` of shape
            ``(1, 1)``; ``nonfinite`` and ``converged`` False of shape ``(1, 1)`` (unknown).
        """
        stat = cls({key: torch.full((1, 1), -1.0, device=device) for key in _DUMMY_KEYS})
        for key in ("nonfinite", "converged"):
            stat[key] = torch.zeros((1, 1), dtype=torch.bool, device=device)
        return stat


def solver_stat_from_final_step(
    z: torch.Tensor,
    fz: torch.Tensor,
    nstep: int = 0,
    tol: float = 1e-3,
    stop_mode: str = "abs",
) -> SolverStat:
    """Statistics of a solve known only by its final estimate (a compatibility helper).

    For runs that skip the forward solve (``f_max_iter=0``, phantom gradients only) but still
    log solver statistics, as the TorchDEQ 0.1.0 model zoo does: the residuals of ``z`` are
    measured from ``fz = f(z)``, and the traces have the single column of that residual.

    Args:
        z (torch.Tensor): The final estimate ``(B, ...)``.
        fz (torch.Tensor): Its image ``f(z)``, shaped like ``z``.
        nstep (int, optional): The number of solver steps taken. Default 0.
        tol (float, optional): The threshold of ``'converged'``. Default 1e-3.
        stop_mode (str, optional): The residual ``'converged'`` compares: ``'abs'`` or
            ``'rel'``. Default ``'abs'``.

    Returns:
        SolverStat: Every documented key, on ``z``'s device (``sradius`` the sentinel -1).

    Raises:
        ValueError: If ``fz`` and ``z`` differ in shape, or ``stop_mode`` is unknown.

    Example:
        >>> z = torch.zeros(2, 3)
        >>> stat = solver_stat_from_final_step(z, torch.full((2, 3), 0.5), nstep=4)
        >>> stat['abs_trace'].shape, stat['nstep'].tolist()
        (torch.Size([2, 1]), [4.0, 4.0])
    """
    check_stop_mode(stop_mode)
    if z.shape != fz.shape:
        raise ValueError(f"fz has shape {tuple(fz.shape)} but z has shape {tuple(z.shape)}")
    with torch.no_grad():
        batch = z.shape[0] if z.dim() else 1
        diff = (fz - z).reshape(batch, -1)
        abs_res = torch.linalg.vector_norm(diff, dim=1)
        rel_res = abs_res / (torch.linalg.vector_norm(fz.reshape(batch, -1), dim=1) + REL_EPS)
        rank = abs_res if stop_mode == "abs" else rel_res
        finite = torch.isfinite(abs_res)
        return SolverStat(
            abs_lowest=abs_res,
            rel_lowest=rel_res,
            abs_trace=abs_res[:, None].clone(),
            rel_trace=rel_res[:, None].clone(),
            nstep=torch.full_like(abs_res, float(nstep)),
            nonfinite=~finite,
            converged=finite & (rank <= tol),
            sradius=torch.full_like(abs_res, SRADIUS_NOT_COMPUTED),
        )
