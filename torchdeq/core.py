"""DEQ modules: solve for a fixed point without autograd, then attach gradients.

``get_deq(args)`` builds a :class:`DEQIndexing` or :class:`DEQSliced` from a configuration;
``deq(f, z0)`` returns ``(states, info)``: in training the sampled trajectory states with
gradients (phantom gradients or implicit differentiation), at evaluation ``[z_star]``.

References:
    Bai, Kolter, Koltun, "Deep Equilibrium Models", NeurIPS 2019 (arXiv 1909.01377);
    Geng, Kolter, "TorchDEQ: A Library for Deep Equilibrium Models", 2023 (arXiv 2310.18605).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from torchdeq.dropout import reset_dropout
from torchdeq.grad import backward_factory, check_solver_kwargs
from torchdeq.loss import power_method
from torchdeq.norm import reset_norm
from torchdeq.solver import is_backward_only, resolve_solver, solver_name
from torchdeq.solver.stat import SRADIUS_NOT_COMPUTED, SolverStat
from torchdeq.utils.checks import OptionError, Registry, check_kwargs
from torchdeq.utils.config import DEQConfig, check_option, get_attr
from torchdeq.utils.packing import StatePacker

__all__ = ["DEQBase", "DEQIndexing", "DEQSliced", "get_deq", "register_deq", "reset_deq"]

#: Per-call aliases of ``solver_kwargs``: the DEQ option names map to the solver's.
_CALL_ALIASES = {"f_max_iter": "max_iter", "f_tol": "tol", "f_stop_mode": "stop_mode"}
_SRADIUS_ITERS = 100


class DEQBase(nn.Module):
    """Base class of DEQ modules: options, solvers, evaluation and the gradient functors.

    Subclasses define how gradients are attached in training (``_train_states``). Every option
    can come from ``args`` (argparse Namespace, dict, :class:`~torchdeq.utils.config.DEQConfig`,
    OmegaConf DictConfig or any attribute container); ``args`` wins over the keyword values.

    Args:
        args: Configuration; keys of ``args`` that are not DEQ options are ignored. Default None.
        f_solver (str): Forward solver (a registered name or a solver function). Default
            ``'fixed_point_iter'``.
        b_solver (str): Backward (IFT) solver, the same way. Default ``'fixed_point_iter'``.
        no_stat (bool, optional): Skip convergence monitoring where the solver allows it:
            ``fixed_point_iter`` then runs as ``simple_fixed_point_iter`` (exactly ``f_max_iter``
            steps, dummy statistics). Anderson and Broyden need residuals to work and keep theirs.
        f_max_iter (int): Forward solver steps (NFE). Default 40.
        b_max_iter (int): Backward solver steps. Default 40.
        f_tol (float): Forward stopping tolerance. Default 1e-3.
        b_tol (float): Backward stopping tolerance. Default 1e-6.
        f_stop_mode (str): ``'abs'`` or ``'rel'`` residual for the forward solve. Default ``'abs'``.
        b_stop_mode (str): Same for the backward solve. Default ``'abs'``.
        eval_factor (float): Test-time forward steps = ``f_max_iter * eval_factor``. Default 1.0.
        eval_f_max_iter (int): Exact test-time forward steps; overrides eval_factor if > 0.
        f_solver_kwargs (dict, optional): Options of the forward solver set once at build time,
            e.g. ``dict(m=5, lam=1e-4)`` for Anderson or ``dict(ls=True)`` for Broyden.
        b_solver_kwargs (dict, optional): Options of the backward solver.
        **kwargs: Other keys of :class:`DEQConfig` (consumed by subclasses or other components);
            any other key is ignored with an :class:`~torchdeq.utils.checks.OptionWarning`
            (an :class:`~torchdeq.utils.checks.OptionError` in strict mode).
    """

    def __init__(
        self,
        args: Any = None,
        f_solver: str = "fixed_point_iter",
        b_solver: str = "fixed_point_iter",
        no_stat: bool | None = None,
        f_max_iter: int = 40,
        b_max_iter: int = 40,
        f_tol: float = 1e-3,
        b_tol: float = 1e-6,
        f_stop_mode: str = "abs",
        b_stop_mode: str = "abs",
        eval_factor: float = 1.0,
        eval_f_max_iter: int = 0,
        f_solver_kwargs: dict | None = None,
        b_solver_kwargs: dict | None = None,
        **kwargs: Any,
    ):
        super().__init__()
        check_kwargs(type(self).__name__, kwargs, DEQConfig.keys())
        self.args = args
        option = self._reader(args)
        self.no_stat = bool(option("no_stat", no_stat))
        f_solver = get_attr(args, "f_solver", f_solver)
        if self.no_stat and f_solver == "fixed_point_iter":
            f_solver = "simple_fixed_point_iter"
        self.f_solver = resolve_solver(f_solver)
        self.b_solver = resolve_solver(get_attr(args, "b_solver", b_solver))
        self.f_solver_name = solver_name(f_solver)
        self.b_solver_name = solver_name(get_attr(args, "b_solver", b_solver))
        if is_backward_only(self.f_solver):
            raise OptionError(
                f"f_solver {self.f_solver_name!r} solves the linear backward system only; "
                "use it as b_solver, and a fixed-point solver (e.g. 'anderson') as f_solver"
            )
        self.f_max_iter = option("f_max_iter", f_max_iter)
        self.b_max_iter = option("b_max_iter", b_max_iter)
        self.f_tol = option("f_tol", f_tol)
        self.b_tol = option("b_tol", b_tol)
        self.f_stop_mode = option("f_stop_mode", f_stop_mode)
        self.b_stop_mode = option("b_stop_mode", b_stop_mode)
        self.eval_factor = option("eval_factor", eval_factor)
        self.eval_f_max_iter = option("eval_f_max_iter", eval_f_max_iter)
        self.f_solver_kwargs = check_solver_kwargs(
            self.f_solver,
            dict(get_attr(args, "f_solver_kwargs", f_solver_kwargs) or {}),
            where="f_solver_kwargs",
            name=self.f_solver_name,
        )
        self.b_solver_kwargs = check_solver_kwargs(
            self.b_solver,
            dict(get_attr(args, "b_solver_kwargs", b_solver_kwargs) or {}),
            where="b_solver_kwargs",
            name=self.b_solver_name,
        )

    def forward(
        self, func, z_init, solver_kwargs=None, sradius_mode=False, backward_writer=None, **kwargs
    ):
        """Defines the computation graph and gradients of DEQ. Must be overridden in subclasses.

        Raises:
            NotImplementedError: Always, in the base class.
        """
        raise NotImplementedError(f"{type(self).__name__} must override forward()")

    # ----------------------------------------------------------------------------------------
    # shared machinery

    def _reader(self, args: Any):
        """``option(name, value)``: the checked value of ``name``; ``args`` wins over ``value``."""
        where = type(self).__name__
        return lambda name, value: check_option(name, get_attr(args, name, value), where)

    def _run(self, func, z_init, solver_kwargs, sradius_mode, backward_writer, kwargs):
        check_kwargs(f"{type(self).__name__}.forward", kwargs, ())
        packer = StatePacker(z_init)
        f = packer.wrap(func)
        z0 = packer.pack(z_init).detach()
        max_iter, opts = self._call_options(solver_kwargs)
        if self.training:
            states, info = self._train_states(f, z0, max_iter, opts, backward_writer)
        else:
            if max_iter is None:
                max_iter = self.eval_f_max_iter or int(self.f_max_iter * self.eval_factor)
            z_star, _, info = self._solve(f, z0, max_iter, None, opts)
            states = [z_star]
        info = SolverStat(info)
        if sradius_mode and not self.training:
            info["sradius"] = self._spectral_radius(f, states[-1])
        else:  # per sample, also where the solver's statistics are a (1, 1) dummy
            info["sradius"] = z0.new_full(z0.shape[:1], SRADIUS_NOT_COMPUTED)
        return [packer.unpack(z) for z in states], info

    def _call_options(self, solver_kwargs: Mapping | None) -> tuple[int | None, dict]:
        """Merges build-time and per-call solver options; returns (per-call max_iter, options)."""
        opts = {"tol": self.f_tol, "stop_mode": self.f_stop_mode, **self.f_solver_kwargs}
        call = {_CALL_ALIASES.get(k, k): v for k, v in (solver_kwargs or {}).items()}
        call = check_solver_kwargs(
            self.f_solver,
            call,
            extra=("max_iter", "tol", "stop_mode"),
            where="solver_kwargs",
            name=self.f_solver_name,
        )
        max_iter = call.pop("max_iter", None)
        if max_iter is not None:
            max_iter = check_option("f_max_iter", max_iter, "solver_kwargs")
        opts.update(call)
        return max_iter, opts

    def _solve(self, f, z0, max_iter, indexing, opts):
        with torch.no_grad():
            return self.f_solver(f, z0, max_iter=max_iter, indexing=indexing, **opts)

    def _spectral_radius(self, f, z_star: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            z = z_star.detach().requires_grad_()
            _, radius = power_method(f(z), z, n_iters=_SRADIUS_ITERS)
        return radius.detach()

    def _build_grad_fns(
        self, args, ift, hook_ift, grad, tau, sup_gap, sup_loc, n_states, indexing
    ) -> None:
        """Creates one gradient functor per sampled state (IFT, if enabled, for the last)."""
        option = self._reader(args)
        self.hook_ift = option("hook_ift", hook_ift)
        self.ift = option("ift", ift) or self.hook_ift
        self.tau = option("tau", tau)
        self.sup_gap = option("sup_gap", sup_gap)
        self.sup_loc = option("sup_loc", sup_loc)
        self.n_states = option("n_states", n_states)
        self.arg_indexing = option("indexing", indexing)
        n = len(self.arg_indexing) if self.arg_indexing else self.n_states
        grads = option("grad", grad) or [1]
        if len(grads) == 1:
            grads = grads * n
        if len(grads) != n:
            raise OptionError(
                f"grad has {len(grads)} values but {n} states are sampled (n_states/indexing); "
                "give one value or one per state"
            )
        self.grad = grads
        phantom = dict(tau=self.tau, sup_gap=self.sup_gap, sup_loc=self.sup_loc)
        fns = [backward_factory(k, **phantom) for k in grads[:-1]]
        if self.ift:
            b_opts = dict(
                max_iter=self.b_max_iter,
                tol=self.b_tol,
                stop_mode=self.b_stop_mode,
                **self.b_solver_kwargs,
            )
            fns.append(
                backward_factory(
                    "ift",
                    hook_ift=self.hook_ift,
                    b_solver=self.b_solver,
                    b_solver_kwargs=b_opts,
                )
            )
        else:
            fns.append(backward_factory(grads[-1], **phantom))
        self.grad_fns = fns

    def _indexing(self, max_iter: int) -> list[int]:
        """Solver steps at which states are sampled: ``indexing``, or ``n_states`` uniform ones."""
        if self.arg_indexing:
            return list(self.arg_indexing)
        step = max_iter // self.n_states
        return [step * (i + 1) for i in range(self.n_states - 1)] + [max_iter]

    def extra_repr(self) -> str:
        grad = "ift" if self.ift else f"phantom(grad={self.grad}, tau={self.tau})"
        return (
            f"f_solver={self.f_solver_name}, f_max_iter={self.f_max_iter}, f_tol={self.f_tol}, "
            f"b_solver={self.b_solver_name}, grad={grad}, n_states={self.n_states}"
        )


_CORE_DOC_ARGS = """
    Args:
        args: Configuration (see :class:`DEQBase`); wins over the keyword values. Default None.
        ift (bool): Implicit differentiation for the final state (the ``torch.autograd.Function``
            implementation). Default False.
        hook_ift (bool): Implicit differentiation for the final state through a backward hook,
            with or without ``ift``. Default False.
        grad (int or list[int]): Phantom gradient steps, one value or one per sampled state
            (a one-element list is the same as its value).
        tau (float): Phantom gradient damping. Default 1.0.
        sup_gap (int): Also return every ``sup_gap``-th phantom state if > 0. Default -1.
        sup_loc (list[int], optional): Also return the phantom states at these steps (an empty
            list is the same as None).
        n_states (int): Number of uniformly sampled states. Default 1 (the fixed point only).
        indexing (list[int], optional): Solver steps at which to sample states; overrides
            ``n_states`` (an empty list is the same as None). The last entry stands for the
            solver's final (best) estimate.
        **kwargs: Options of :class:`DEQBase` (solvers, iterations, tolerances, ...).
"""

_FORWARD_DOC = """Solves for the fixed point of ``func`` and attaches gradients.

        Args:
            func (callable): The cell ``f``; for a tuple/list state it takes the elements as
                separate arguments and returns a tuple/list of the same shapes.
            z_init (Tensor or tuple/list of Tensors): Initial state, batch first.
            solver_kwargs (dict, optional): Per-call solver options: ``f_max_iter``, ``f_tol``,
                ``f_stop_mode`` (or ``max_iter``, ``tol``, ``stop_mode``) and the forward solver's
                own options. Unknown keys are ignored with an OptionWarning (an OptionError
                in strict mode).
            sradius_mode (bool): At evaluation, estimate the spectral radius of ``J_f(z*)`` by
                the power method into ``info['sradius']`` (shape (B,)); otherwise it holds
                ``-1`` per sample. Default False.
            backward_writer (callable, optional): Receives the backward solver's statistics.
            **kwargs: Ignored, with an OptionWarning naming them (an OptionError in strict
                mode).

        Returns:
            tuple[list, SolverStat]: In training, the sampled states (with gradients), in
            evaluation ``[z_star]``; each state has ``z_init``'s structure. ``info`` holds
            every key of :class:`~torchdeq.solver.stat.SolverStat`: ``abs_lowest``,
            ``rel_lowest``, ``nstep``, ``nonfinite``, ``converged``, ``sradius`` (B,) and
            ``abs_trace``, ``rel_trace`` (B, N).
        """


class _SampledDEQ(DEQBase):
    """The options and forward pass that DEQIndexing and DEQSliced share."""

    _increasing_indexing = False

    def __init__(
        self,
        args=None,
        ift=False,
        hook_ift=False,
        grad=1,
        tau=1.0,
        sup_gap=-1,
        sup_loc=None,
        n_states=1,
        indexing=None,
        **kwargs,
    ):
        super().__init__(args, **kwargs)
        self._build_grad_fns(args, ift, hook_ift, grad, tau, sup_gap, sup_loc, n_states, indexing)
        if (
            self._increasing_indexing
            and self.arg_indexing
            and any(b <= a for a, b in zip(self.arg_indexing, self.arg_indexing[1:]))
        ):
            raise OptionError(
                f"{type(self).__name__} needs increasing indexing, got {self.arg_indexing}"
            )

    def forward(
        self, func, z_init, solver_kwargs=None, sradius_mode=False, backward_writer=None, **kwargs
    ):
        return self._run(func, z_init, solver_kwargs, sradius_mode, backward_writer, kwargs)

    forward.__doc__ = _FORWARD_DOC


class DEQIndexing(_SampledDEQ):
    __doc__ = f"""DEQ whose gradients are attached aside one full solve, at indexed states.

    The solver runs ``f_max_iter`` steps (or stops at ``f_tol``) without autograd and records
    the states at ``indexing`` (or ``n_states`` uniform steps); each recorded state gets a
    phantom gradient, and the final estimate gets IFT when ``ift=True``. At most ``f_max_iter``
    solver calls of ``f`` plus the gradient steps.
    {_CORE_DOC_ARGS}
    Example:
        >>> lin = torch.nn.Linear(8, 8)
        >>> deq = DEQIndexing(n_states=2, f_max_iter=20)
        >>> states, info = deq(lambda z: torch.tanh(0.5 * lin(z)), torch.zeros(4, 8))
        >>> len(states), info['nstep'].shape
        (2, torch.Size([4]))
    """

    def _train_states(self, f, z0, max_iter, opts, writer):
        max_iter = self.f_max_iter if max_iter is None else max_iter
        indexing = self._indexing(max_iter)
        z_star, trajectory, info = self._solve(f, z0, max_iter, indexing[:-1] or None, opts)
        states = []
        for grad_fn, z in zip(self.grad_fns, [*trajectory, z_star]):
            states.extend(grad_fn(self, f, z, writer=writer))
        return states, info


class DEQSliced(_SampledDEQ):
    __doc__ = f"""DEQ whose gradients are inserted between slices of the solve.

    The solve is cut at ``indexing`` (or ``n_states`` uniform steps); each slice runs without
    autograd, the gradient functor is applied to its result, and the next slice resumes from the
    functor's output. At most ``f_max_iter + n_states * grad`` calls of ``f``.
    {_CORE_DOC_ARGS}
    Example:
        >>> lin = torch.nn.Linear(8, 8)
        >>> deq = DEQSliced(n_states=2, f_max_iter=20, grad=2)
        >>> states, info = deq(lambda z: torch.tanh(0.5 * lin(z)), torch.zeros(4, 8))
        >>> len(states)
        2
    """

    _increasing_indexing = True  # the slices run from one index to the next

    def _train_states(self, f, z0, max_iter, opts, writer):
        max_iter = self.f_max_iter if max_iter is None else max_iter
        z, done, states, infos, offsets = z0, 0, [], [], []
        for grad_fn, stop in zip(self.grad_fns, self._indexing(max_iter)):
            z_star, _, info = self._solve(f, z.detach(), max(stop - done, 0), None, opts)
            infos.append(info)
            offsets.append(done)
            sampled = grad_fn(self, f, z_star, writer=writer)
            states.extend(sampled)
            z, done = sampled[-1], max(stop, done)
        return states, _merge_stats(infos, offsets, opts["stop_mode"])


def _merge_stats(infos: list[SolverStat], offsets: list[int], stop_mode: str) -> SolverStat:
    """Joins the statistics of consecutive solves into those of one trajectory.

    Each sample's best iterate is the one with the lowest residual in ``stop_mode`` over all
    the solves; ``nstep``, the lowest residuals and ``converged`` come from that solve.
    """
    if len(infos) == 1:
        return infos[0]
    last = infos[-1]
    traces = [i.get("abs_trace") for i in infos]
    if any(t is None or t.dim() != 2 or t.shape[0] != last["abs_lowest"].shape[0] for t in traces):
        return last  # dummy statistics (e.g. simple_fixed_point_iter): nothing to join
    merged = SolverStat(last)
    for key in ("abs_trace", "rel_trace"):
        merged[key] = torch.cat([i[key] for i in infos], dim=1)
    best = torch.stack([i[f"{stop_mode}_lowest"] for i in infos])  # (S, B)
    seg = best.argmin(dim=0)
    for key in ("abs_lowest", "rel_lowest", "converged"):
        if key not in last:  # a user-registered solver's statistics may lack it
            continue
        merged[key] = torch.stack([i[key] for i in infos]).gather(0, seg[None]).squeeze(0)
    nsteps = torch.stack([i["nstep"] + o for i, o in zip(infos, offsets)])
    merged["nstep"] = nsteps.gather(0, seg[None]).squeeze(0)
    if "nonfinite" in last:
        merged["nonfinite"] = torch.stack([i["nonfinite"] for i in infos]).any(dim=0)
    return merged


_CORES = Registry("DEQ core", {"indexing": DEQIndexing, "sliced": DEQSliced})


class _Overlay(Mapping):
    """``args`` seen through ``overrides``: the configuration that get_deq hands to a core."""

    def __init__(self, args: Any, overrides: Mapping):
        self.args, self.overrides = args, overrides

    def __getitem__(self, key: str) -> Any:
        if key in self.overrides:
            return self.overrides[key]
        missing = object()
        value = get_attr(self.args, key, missing)
        if value is missing:
            raise KeyError(key)
        return value

    def _keys(self) -> list[str]:
        if isinstance(self.args, Mapping):
            base = list(self.args.keys())
        else:
            base = [k for k in getattr(self.args, "__dict__", {}) if not k.startswith("_")]
        return list(dict.fromkeys([*self.overrides, *base]))

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())

    def __getattr__(self, key: str) -> Any:  # attribute access, for user-registered cores
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None


def get_deq(args: Any = None, **kwargs: Any) -> DEQBase:
    """Builds a DEQ module from a configuration.

    ``args.core`` (or ``core=``) selects the class: ``'sliced'`` (default) for
    :class:`DEQSliced`, ``'indexing'`` for :class:`DEQIndexing`, or a name added with
    :func:`register_deq`. Both cores compute the same evaluation output; in training DEQIndexing
    attaches gradients aside one solve (at most ``f_max_iter`` solver calls) and DEQSliced inserts
    them into it (at most ``f_max_iter + n_states * grad`` calls).

    Args:
        args: argparse Namespace, dict, DEQConfig, OmegaConf DictConfig or any object with
            attributes. Keys that are not DEQ options are ignored. Default None.
        **kwargs: Options that update ``args``. Unknown names are ignored with an
            OptionWarning (an OptionError in strict mode).

    Returns:
        DEQBase: The DEQ module.

    Example:
        >>> deq = get_deq(core='sliced', f_solver='anderson', f_max_iter=20)
        >>> import argparse
        >>> deq = get_deq(argparse.Namespace(core='indexing', n_states=2))
    """
    core = kwargs.get("core", get_attr(args, "core", "sliced"))
    core_cls = _CORES.lookup(core)
    if core_cls in (DEQIndexing, DEQSliced):
        kwargs = check_kwargs("get_deq", kwargs, DEQConfig.keys())
    return core_cls(args=_Overlay(args, kwargs))


def register_deq(deq_type: str, core: type) -> None:
    """Registers a DEQ class under ``deq_type`` for :func:`get_deq` (``core=deq_type``).

    Example:
        >>> class CustomDEQ(DEQSliced): ...
        >>> register_deq('custom', CustomDEQ)
    """
    _CORES.register(deq_type, core)


def reset_deq(model: nn.Module) -> None:
    """Resets the normalisation and variational dropout masks in ``model`` (once per batch).

    Example:
        >>> deq_layer = torch.nn.Linear(4, 4)
        >>> reset_deq(deq_layer)
    """
    reset_norm(model)
    reset_dropout(model)
