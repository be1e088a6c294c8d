"""Reversible DEQ: exact gradients of a fixed-point iteration in memory independent of its length.

The forward pass is the coupled relaxation of McCallum, Arora and Foster (2025)::

    y_{n+1} = (1 - beta) y_n + beta f(z_n)
    z_{n+1} = (1 - beta) z_n + beta f(y_{n+1})

from ``y_0 = z_0 = z_init``, and the model's output is ``z_N``. Each step is algebraically
invertible (``z_n = (z_{n+1} - beta f(y_{n+1})) / (1 - beta)``, then ``y_n = (y_{n+1} -
beta f(z_n)) / (1 - beta)``), so the backward pass rebuilds every earlier state from the final
pair and backpropagates through the steps exactly, keeping nothing but that pair: two calls of
``f`` and two vector-Jacobian products per step, as in the forward pass.

The gradient reaches everything ``f`` closes over (its parameters, and inputs such as the
injection ``x`` with their own graphs): the tensors that require grad are found while the first
step runs (:class:`_Inputs`) and become inputs of one autograd function, so the graph outside
``f`` is traversed once, not once per step.

References:
    McCallum, S., Arora, K. and Foster, J. "Reversible Deep Equilibrium Models." 2025,
    arXiv:2509.12917.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

from torchdeq.core import DEQBase, register_deq
from torchdeq.solver.loop import REL_EPS
from torchdeq.solver.stat import SolverStat
from torchdeq.utils.checks import OptionError
from torchdeq.utils.config import check_option, get_attr

__all__ = ["ReversibleDEQ"]

#: DEQ options whose other values would have no effect on this core.
_UNUSED = {
    "f_solver": ("fixed_point_iter", "simple_fixed_point_iter"),
    "ift": (False,),
    "hook_ift": (False,),
    "n_states": (1,),
    "indexing": (None,),
}


def _tensors(tree: Any):
    if isinstance(tree, Tensor):
        yield tree
    elif isinstance(tree, (list, tuple)):
        for item in tree:
            yield from _tensors(item)
    elif isinstance(tree, dict):
        for item in tree.values():
            yield from _tensors(item)


class _Inputs(TorchFunctionMode):
    """Collects the tensors that require grad among the arguments of the torch calls made,
    except those the calls themselves made: the differentiable tensors that ``f`` closes over
    (parameters, injections, the weights a normalisation hook computes), in a stable order.

    It runs with grad enabled, so that modules which hand detached tensors to no-grad calls
    (cached normalised weights) show the tensors a differentiable call would use.
    """

    def __init__(self):
        super().__init__()
        self.found: dict[int, Tensor] = {}
        self.made: dict[int, Tensor] = {}  # kept alive, so their ids stay theirs

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for t in _tensors((args, kwargs)):
            if t.requires_grad and id(t) not in self.made:
                self.found.setdefault(id(t), t)
        out = func(*args, **kwargs)
        for t in _tensors(out):
            self.made[id(t)] = t
        return out


class _Run:
    """One reversible solve: the forward steps, their statistics, the backward sweep."""

    def __init__(self, f: Callable[[Tensor], Tensor], beta: float):
        self.f, self.beta = f, beta

    def forward(self, z0: Tensor, steps: int, tol: float, rel: bool, collect: bool):
        """Runs up to ``steps`` steps without a graph; returns ``(y, z, steps done, stat, inputs)``."""
        b, f = self.beta, self.f
        y = z = z0
        res, fnorm, inputs = [], [], []
        done = 0
        with torch.no_grad():
            for n in range(steps):
                if n == 0 and collect:
                    with torch.enable_grad(), _Inputs() as mode:
                        fz = f(z).detach()
                    inputs = list(mode.found.values())
                    del mode
                else:
                    fz = f(z)
                flat = (fz - z).flatten(1)
                res.append(torch.linalg.vector_norm(flat, dim=1))
                fnorm.append(torch.linalg.vector_norm(fz.flatten(1), dim=1))
                if tol > 0:
                    rank = res[-1] / (fnorm[-1] + REL_EPS) if rel else res[-1]
                    if bool((rank < tol).all()):
                        break
                y = torch.lerp(y, fz, b)
                z = torch.lerp(z, f(y), b)
                done += 1
        return y, z, done, _stat(res, fnorm, done, z0, tol, rel), inputs

    def backward(self, y: Tensor, z: Tensor, steps: int, grad_z: Tensor, inputs: list[Tensor]):
        """Reconstructs the states backwards and returns ``dL/dinputs`` (None where unused)."""
        b, f = self.beta, self.f
        grad_y = torch.zeros_like(grad_z)
        totals: list[Tensor | None] = [None] * len(inputs)

        def vjp(at: Tensor, cotangent: Tensor) -> tuple[Tensor, Tensor]:
            leaf = at.detach().requires_grad_()
            with torch.enable_grad():
                out = f(leaf)
            grads = torch.autograd.grad(out, [leaf, *inputs], cotangent, allow_unused=True)
            for i, g in enumerate(grads[1:]):
                if g is not None:
                    totals[i] = g if totals[i] is None else totals[i] + g
            return out.detach(), grads[0] if grads[0] is not None else torch.zeros_like(at)

        for _ in range(steps):
            # z_{n+1} = (1 - b) z_n + b f(y_{n+1})
            fy, jy = vjp(y, b * grad_z)
            z = (z - b * fy) / (1 - b)
            grad_y = grad_y + jy
            # y_{n+1} = (1 - b) y_n + b f(z_n)
            fz, jz = vjp(z, b * grad_y)
            y = (y - b * fz) / (1 - b)
            grad_z = (1 - b) * grad_z + jz
            grad_y = (1 - b) * grad_y
        return totals, (y, z)


class _Reversible(torch.autograd.Function):
    """``z_N`` as a function of the tensors ``f`` closes over, with the reversible backward."""

    @staticmethod
    def forward(ctx, run: _Run, steps: int, y: Tensor, z: Tensor, *inputs: Tensor) -> Tensor:
        ctx.run, ctx.steps, ctx.inputs = run, steps, inputs
        ctx.save_for_backward(y, z)
        return z.view_as(z)

    @staticmethod
    def backward(ctx, grad_z: Tensor):
        y, z = ctx.saved_tensors
        totals, _ = ctx.run.backward(y, z, ctx.steps, grad_z, list(ctx.inputs))
        return (None, None, None, None, *totals)


def _stat(
    res: list[Tensor], fnorm: list[Tensor], done: int, z0: Tensor, tol: float, rel: bool
) -> SolverStat:
    batch = z0.shape[0]
    if res:
        abs_trace = torch.stack(res, dim=1)
        rel_trace = abs_trace / (torch.stack(fnorm, dim=1) + REL_EPS)
        abs_last, rel_last = abs_trace[:, -1], rel_trace[:, -1]
    else:
        abs_trace = rel_trace = z0.new_zeros(batch, 0)
        abs_last = rel_last = z0.new_full((batch,), float("inf"))
    return SolverStat(
        abs_lowest=abs_last,
        rel_lowest=rel_last,
        abs_trace=abs_trace,
        rel_trace=rel_trace,
        nstep=z0.new_full((batch,), float(done)),
        nonfinite=~torch.isfinite(abs_trace).all(dim=1),
        converged=torch.isfinite(abs_last) & ((rel_last if rel else abs_last) <= tol),
    )


class ReversibleDEQ(DEQBase):
    """DEQ whose forward pass is the reversible coupled relaxation, with exact gradients.

    In training the output ``z_N`` carries the exact gradient of the ``N``-step iteration
    (backpropagation through it, rebuilt by inversion), with autograd memory of one state pair
    whatever ``N``; at evaluation the same iteration runs for ``f_max_iter * eval_factor`` (or
    ``eval_f_max_iter``) steps. A step is two calls of ``f``; ``f_tol > 0`` stops all samples
    once each meets it (in ``f_stop_mode``). ``info`` holds the residuals ``||f(z_n) - z_n||``
    that the steps measure (of ``z_0 .. z_{N-1}``, plus the stopping one); ``abs_lowest`` and
    ``rel_lowest`` are those of the last measured iterate and ``nstep`` is ``N``.

    The iteration is its own solver and its backward pass is exact, so ``f_solver`` must stay
    a fixed-point iteration, and IFT, ``n_states`` and ``indexing`` do not apply (other values
    raise); phantom-gradient options (``grad``, ``tau``, ...) are not read.

    Args:
        args: Configuration, as for :class:`~torchdeq.core.DEQBase`.
        beta (float): Relaxation in (0, 2), not 1 (where the step cannot be inverted).
            The backward reconstruction divides by ``1 - beta`` twice a step, so rounding
            errors grow like ``|1 - beta|^-2N``; 0.5 keeps float32 reconstructions of a few
            steps accurate (measured in the README). Default: 0.5.
        **kwargs: Options of :class:`~torchdeq.core.DEQBase`.

    Example:
        >>> lin = torch.nn.Linear(8, 8)
        >>> deq = ReversibleDEQ(beta=0.5, f_max_iter=6)  # or get_deq(core='reversible', ...)
        >>> states, info = deq(lambda z: torch.tanh(0.5 * lin(z)), torch.zeros(4, 8))
        >>> states[0].requires_grad, info['nstep'].tolist()
        (True, [6.0, 6.0, 6.0, 6.0])

    References:
        McCallum, Arora and Foster, "Reversible Deep Equilibrium Models", 2025,
        arXiv:2509.12917.
    """

    def __init__(self, args: Any = None, beta: float = 0.5, **kwargs: Any):
        super().__init__(args, **kwargs)
        beta = check_option("beta", get_attr(args, "beta", beta), type(self).__name__)
        if beta == 2 or beta == 1:
            raise OptionError(
                f"beta={beta!r}: the reversible step needs beta in (0, 1) or (1, 2) (it divides "
                "by 1 - beta, and beta=2 does not converge)"
            )
        self.beta = float(beta)
        for key, allowed in _UNUSED.items():
            value = get_attr(args, key, kwargs.get(key, allowed[0]))
            if key == "f_solver":
                value = self.f_solver_name
            if value not in allowed:
                raise OptionError(
                    f"core 'reversible' is its own solver with exact gradients: {key}={value!r} "
                    f"does not apply (valid: {', '.join(map(repr, allowed))})"
                )
        # the fixed_point_iter solver group's own default (tau=1) is the only harmless option
        if self.f_solver_kwargs not in ({}, {"tau": 1.0}):
            raise OptionError(
                "core 'reversible' takes no f_solver_kwargs (beta is its relaxation), got "
                f"{dict(self.f_solver_kwargs)}"
            )

    def forward(
        self, func, z_init, solver_kwargs=None, sradius_mode=False, backward_writer=None, **kwargs
    ):
        """Runs the reversible iteration and attaches its exact gradient.

        Args:
            func (callable): The cell ``f`` (tuple states: one argument per element).
            z_init (Tensor or tuple/list of Tensors): Initial state ``y_0 = z_0``.
            solver_kwargs (dict, optional): Per call: ``f_max_iter`` (or ``max_iter``),
                ``f_tol`` (``tol``), ``f_stop_mode`` (``stop_mode``). Others raise.
            sradius_mode (bool): At evaluation, add ``info['sradius']``. Default False.
            backward_writer (callable, optional): Not called (no backward solve); accepted for
                the common interface.

        Returns:
            tuple[list, SolverStat]: ``[z_N]`` shaped like ``z_init``, and the statistics.
        """
        return self._run(func, z_init, solver_kwargs, sradius_mode, backward_writer, kwargs)

    def _call_options(self, solver_kwargs):
        max_iter, opts = super()._call_options(solver_kwargs)
        extra = set(opts) - {"tol", "stop_mode", "tau"}
        if extra or opts.get("tau", 1.0) != 1.0:
            extra = sorted(extra | ({"tau"} if opts.get("tau", 1.0) != 1.0 else set()))
            raise OptionError(f"core 'reversible' got solver option(s) {extra} it cannot apply")
        return max_iter, opts

    def _solve(self, f, z0, max_iter, indexing, opts):
        _, z, _, stat, _ = _Run(f, self.beta).forward(
            z0, max_iter, opts["tol"], opts["stop_mode"] == "rel", collect=False
        )
        return z, [], stat

    def _train_states(self, f, z0, max_iter, opts, writer):
        steps = self.f_max_iter if max_iter is None else max_iter
        run = _Run(f, self.beta)
        y, z, done, stat, inputs = run.forward(
            z0, steps, opts["tol"], opts["stop_mode"] == "rel", collect=True
        )
        if not inputs:  # nothing to differentiate
            return [z], stat
        return [_Reversible.apply(run, done, y, z, *inputs)], stat

    def extra_repr(self) -> str:
        return f"core=reversible, beta={self.beta}, f_max_iter={self.f_max_iter}, f_tol={self.f_tol}"


register_deq("reversible", ReversibleDEQ)
