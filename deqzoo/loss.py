"""The training losses every DEQ shares: fixed-point correction and Jacobian regularisation.

:class:`DEQLoss` holds the ``loss:`` node of ``conf/train.yaml`` (every project's model node
wires it: ``loss: ${loss}``) and is used by :class:`deqzoo.module.DEQLitModule`:

* ``fp_correction`` over the states the net returns (Bai, Geng, Savani and Kolter, "Deep
  Equilibrium Optical Flow Estimation", CVPR 2022): one state is the plain task loss;
* Jacobian regularisation (Bai, Koltun and Kolter, "Stabilizing Equilibrium Models by Jacobian
  Regularization", ICML 2021): on a step drawn with probability ``jac_loss_freq`` the net is
  called with ``jac_loss=True`` and puts ``||J_f(z*)||_F^2 / d`` into ``info['jac_loss']``
  (:func:`jac_loss_at` computes it); the loss adds it times ``jac_loss_weight``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from torchdeq.loss import fp_correction, jac_reg
from torchdeq.utils.checks import OptionError

__all__ = ["DEQLoss", "jac_loss_at"]


def jac_loss_at(f: Callable[..., Any], z: Tensor | Sequence[Tensor], vecs: int = 1) -> Tensor:
    """The Jacobian regulariser of ``f`` at the state ``z``: :func:`torchdeq.loss.jac_reg` there.

    ``z`` is detached (the regulariser trains ``f``'s parameters, not the solve); a tuple state
    (e.g. the resolution branches of a multiscale DEQ, with ``f(*z)``) is treated as one flat
    vector, so the estimate covers the whole Jacobian, cross-branch blocks included.

    Args:
        f (Callable): The DEQ's function, ``f(z)`` for a tensor state, ``f(*z)`` for a tuple.
        z (Tensor | Sequence[Tensor]): The state, usually the fixed point (``states[-1]``).
        vecs (int, optional): Hutchinson vectors. Default 1.

    Returns:
        Tensor: A scalar with a graph to ``f``'s parameters.

    Example:
        >>> lin = torch.nn.Linear(4, 4)
        >>> loss = jac_loss_at(lambda z: torch.tanh(lin(z)), torch.randn(2, 4))
        >>> loss.backward(); lin.weight.grad.abs().sum() > 0
        tensor(True)
    """
    if isinstance(z, Tensor):
        z0 = z.detach().requires_grad_()
        return jac_reg(f(z0), z0, vecs=vecs)
    parts = [t.detach() for t in z]
    batch = parts[0].shape[0]
    sizes = [t[0].numel() for t in parts]
    flat = torch.cat([t.reshape(batch, -1) for t in parts], dim=1).requires_grad_()
    pieces = [p.reshape(t.shape) for p, t in zip(flat.split(sizes, dim=1), parts)]
    out = f(*pieces)
    out = torch.cat([o.reshape(batch, -1) for o in out], dim=1)
    return jac_reg(out, flat, vecs=vecs)


class DEQLoss:
    """The shared DEQ loss options and their use (the ``loss:`` config node).

    Args:
        weight_func (str, optional): ``fp_correction``'s weight function (``'exp'``,
            ``'const'``, ``'linear'`` or one registered with
            :func:`torchdeq.loss.register_weight_func`). Default ``'exp'``.
        gamma (float | None, optional): Decay of the ``'exp'`` weights, ``gamma ** (n-1-k)``;
            must be None for a weight function without it. Default 0.8.
        jac_loss_weight (float, optional): Weight of the Jacobian regulariser; 0 turns it off
            (no Jacobian work at all). Default 0.0.
        jac_loss_freq (float, optional): Probability that a training step regularises.
            Default 0.0 (with a positive weight: set it too, e.g. 1.0 or 0.2).
        jac_incremental (int, optional): Optimiser steps over which the weight ramps up
            linearly from 0 to ``jac_loss_weight``; 0 applies it fully from the start.
            Default 0.

    Raises:
        OptionError: For an unknown weight function, a ``gamma`` it does not take, a negative
            weight, a frequency outside ``[0, 1]``, a positive weight with frequency 0 (or the
            reverse: either alone does nothing), or a negative ``jac_incremental``.

    Example:
        >>> loss = DEQLoss(gamma=0.5)
        >>> float(loss.correction([torch.tensor(4.0), torch.tensor(1.0)], lambda p: p))
        3.0
    """

    def __init__(
        self,
        weight_func: str = "exp",
        gamma: float | None = 0.8,
        jac_loss_weight: float = 0.0,
        jac_loss_freq: float = 0.0,
        jac_incremental: int = 0,
    ) -> None:
        self.weight_kwargs = {} if gamma is None else {"gamma": float(gamma)}
        try:  # validates the weight function and its keywords now, not at the first step
            fp_correction(lambda v: v, ([0.0],), weight_func, **self.weight_kwargs)
        except OptionError as err:
            raise OptionError(
                f"loss.weight_func={weight_func!r} with loss.gamma={gamma!r}: {err} "
                f"(set loss.gamma=null for a weight function without gamma)"
            ) from None
        if jac_loss_weight < 0:
            raise OptionError(f"loss.jac_loss_weight must be >= 0, got {jac_loss_weight!r}")
        if not 0.0 <= jac_loss_freq <= 1.0:
            raise OptionError(f"loss.jac_loss_freq must be in [0, 1], got {jac_loss_freq!r}")
        if (jac_loss_weight > 0) != (jac_loss_freq > 0):
            raise OptionError(
                f"loss.jac_loss_weight={jac_loss_weight!r} and loss.jac_loss_freq="
                f"{jac_loss_freq!r}: Jacobian regularisation needs both > 0 (or both 0 for none)"
            )
        if int(jac_incremental) < 0:
            raise OptionError(f"loss.jac_incremental must be >= 0, got {jac_incremental!r}")
        self.weight_func = weight_func
        self.gamma = gamma
        self.jac_loss_weight = float(jac_loss_weight)
        self.jac_loss_freq = float(jac_loss_freq)
        self.jac_incremental = int(jac_incremental)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | DEQLoss | None) -> DEQLoss:
        """A :class:`DEQLoss` from a config mapping (unknown keys raise), itself, or defaults."""
        if isinstance(cfg, DEQLoss):
            return cfg
        cfg = dict(cfg or {})
        known = ("weight_func", "gamma", "jac_loss_weight", "jac_loss_freq", "jac_incremental")
        unknown = sorted(set(cfg) - set(known))
        if unknown:
            raise OptionError(f"unknown loss option(s) {unknown}; valid choices: {list(known)}")
        return cls(**cfg)

    def to_dict(self) -> dict[str, Any]:
        """The options, as the ``loss:`` node writes them."""
        return {
            "weight_func": self.weight_func,
            "gamma": self.gamma,
            "jac_loss_weight": self.jac_loss_weight,
            "jac_loss_freq": self.jac_loss_freq,
            "jac_incremental": self.jac_incremental,
        }

    @property
    def uses_jacobian(self) -> bool:
        """Whether any step can regularise the Jacobian."""
        return self.jac_loss_weight > 0

    def correction(self, outputs: Any, task_loss: Callable[[Any], Tensor]) -> Tensor:
        """``sum_k w(n, k) task_loss(outputs[k])`` over the returned states (one: the plain loss).

        Args:
            outputs (Any): The per-state predictions (a list or tuple, last = the fixed-point
                estimate); anything else is one state.
            task_loss (Callable[[Any], Tensor]): The project's loss of one state's prediction.

        Returns:
            Tensor: The weighted loss.
        """
        if not isinstance(outputs, (list, tuple)):
            return task_loss(outputs)
        return fp_correction(task_loss, (list(outputs),), self.weight_func, **self.weight_kwargs)

    def draw_jacobian(self, generator: torch.Generator | None = None) -> bool:
        """Whether this training step regularises (probability ``jac_loss_freq``)."""
        if not self.uses_jacobian:
            return False
        if self.jac_loss_freq >= 1.0:
            return True
        return bool(torch.rand((), generator=generator) < self.jac_loss_freq)

    def jac_weight(self, step: int) -> float:
        """The regulariser's weight at optimiser step ``step`` (ramped by ``jac_incremental``)."""
        if self.jac_incremental <= 0:
            return self.jac_loss_weight
        return self.jac_loss_weight * min((step + 1) / self.jac_incremental, 1.0)
