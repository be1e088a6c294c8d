"""The statistics record that every solver returns."""

from __future__ import annotations

import torch

_DUMMY_KEYS = ("abs_lowest", "rel_lowest", "abs_trace", "rel_trace", "nstep")


class SolverStat(dict):
    """Solver statistics for a batch, queried as dictionary keys.

    Residuals are per sample, over all non-batch dimensions: the absolute residual of an
    iterate ``z`` is ``||f(z) - z||_2`` and the relative one is
    ``||f(z) - z||_2 / (||f(z)||_2 + 1e-8)``.

    Valid keys:

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
      Such a sample returns its best finite iterate (the initial guess if none). Only the
      monitoring solvers report it.
    - ``'sradius'``: optional, added by the DEQ core in eval mode with ``sradius_mode=True``:
      the largest absolute eigenvalue of the Jacobian estimated by power iteration, ``(B,)``.

    Example:
        >>> stat = SolverStat(nstep=torch.tensor([3.0]))
        >>> stat['nstep']
        tensor([3.])
    """

    @classmethod
    def dummy(cls, device: torch.device | str | None = None) -> SolverStat:
        """The placeholder of solvers that do not monitor: every value -1 of shape (1, 1).

        Args:
            device (torch.device | str | None): Where the tensors live.

        Returns:
            SolverStat: The five documented residual keys, each ``-1`` of shape ``(1, 1)``.
        """
        return cls({key: torch.full((1, 1), -1.0, device=device) for key in _DUMMY_KEYS})
