"""The shared machinery of weight reparametrisations: hooking, caching, removal.

A norm replaces a module's Parameter ``name`` (say ``weight``) by parameters and buffers of its
own, and sets the effective weight in a forward pre-hook, so the module's ``forward`` reads
``module.weight`` as usual.

Why a cache: a DEQ solver calls the layer 20-40 times per forward pass under ``torch.no_grad()``,
then a few times with gradients (phantom-gradient or IFT steps), and the effective weight does
not change in between. So the weight is computed at most twice per parameter update: once
without a graph for the no-grad calls, once with a graph at the first grad-enabled call. The
graph-attached weight is the output of :class:`_Reusable`, whose backward re-runs the weight's
own graph with ``retain_graph=True``: every grad-enabled call shares it, the weight's backward
runs once per backward pass however many calls used it, and gradient accumulation over several
backward passes (or ``torch.utils.checkpoint`` recomputation) works without a new forward.
The weight's graph is built outside any saved-tensor hooks (those of ``torch.utils.checkpoint``
and ``mem_gc`` among them), so a checkpointed region that first computes the weight and its
recomputation, which finds the weight cached, save the same tensors.

The cache is keyed on the identity, storage pointer and ``_version`` of every tensor the norm
owns (an optimizer step, ``load_state_dict`` or any in-place edit bumps ``_version``;
``module.to()`` swaps the storage) and on ``module.training``; :meth:`BaseNorm.reset` (called by
``reset_norm``) clears it explicitly. Edits through ``param.data`` bypass the version counter:
call ``reset_norm`` after them (an EMA copy updated through ``.data``, for instance).

Between calls the module holds the detached effective weight, not one attached to the autograd
graph, so ``copy.deepcopy`` works after a forward pass. To differentiate the weight outside a
forward pass, call the norm's ``compute_weight``.
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

from torchdeq.utils.checks import OptionError
from torchdeq.utils.config import check_option, get_attr, has_attr

# Option name -> (key in ``deq_args``, conversion). ``deq_args`` wins over keyword arguments.
_ARG_KEYS = {
    "learn_scale": ("norm_no_scale", lambda v: not bool(v)),
    "target_norm": ("norm_target_norm", float),
    "clip": ("norm_clip", bool),
    "clip_value": ("norm_clip_value", float),
    "n_power_iterations": ("sn_n_power_iters", int),
}


class _Reusable(torch.autograd.Function):
    """Wraps graph-attached weights so that any number of backward passes can use them.

    ``forward(ctx, weights, *params)`` returns detached copies of ``weights`` (a list, hidden
    from autograd) linked to ``params``, the tensors the weights were computed from. Its
    backward differentiates the kept ``weights`` graph with ``retain_graph=True``, so the graph
    is never freed while the cache holds it, and ``create_graph`` when double backward asks.
    """

    @staticmethod
    def forward(ctx: Any, weights: list[torch.Tensor], *params: torch.Tensor) -> tuple:
        ctx.weights, ctx.params = tuple(weights), params
        return tuple(w.detach() for w in weights)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple:
        param_grads = torch.autograd.grad(
            ctx.weights,
            ctx.params,
            grads,
            retain_graph=True,
            create_graph=torch.is_grad_enabled(),
            allow_unused=True,
        )
        return (None, *param_grads)


class _Cached(NamedTuple):
    training: bool  # the module's mode ...
    tensors: list[torch.Tensor]  # ... and the tensors the weights were computed from,
    versions: list[tuple[int, int]]  # with their storage pointers and versions
    weights: list[torch.Tensor]  # what grad-enabled calls use
    detached: list[torch.Tensor]  # what no-grad calls use and the module holds between calls
    graph: bool  # whether ``weights`` are attached to the autograd graph


def _keep(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


@contextlib.contextmanager
def _outside_saved_tensor_hooks() -> Iterator[None]:
    """Suspends every active pair of saved-tensor hooks (``torch.utils.checkpoint``'s, say).

    Autograd then saves tensors its own way, which holds a saved *output* without a reference
    cycle and keeps double backward exact. Pushing an identity pair instead (``_keep``) would
    escape the outer hooks too, but a pack hook that returns a node's own output ties the
    output and its node in a cycle the garbage collector cannot see: every recomputed weight's
    graph would leak (about 3 MiB per training step on the deq_lm default). The identity pair
    is the fallback where the stack of hooks cannot be inspected.
    """
    hooks = torch._C._autograd
    needed = ("_top_saved_tensors_default_hooks", "_pop_saved_tensors_default_hooks")
    if not all(hasattr(hooks, name) for name in needed):  # pragma: no cover - older torch
        with torch.autograd.graph.saved_tensors_hooks(_keep, _keep):
            yield
        return
    suspended = []
    while (pair := hooks._top_saved_tensors_default_hooks(False)) is not None:
        suspended.append(pair)
        hooks._pop_saved_tensors_default_hooks()
    try:
        yield
    finally:
        for pack, unpack in reversed(suspended):
            hooks._push_saved_tensors_default_hooks(pack, unpack)


def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def pair_names_dims(
    names: str | Sequence[str], dims: int | None | Sequence[int | None]
) -> tuple[list[str], list[int | None]]:
    """Turns ``names`` and ``dims`` (each one value or a list) into two lists of equal length.

    A single ``dims`` value applies to every name.

    Raises:
        OptionError: If both are lists of different lengths.
    """
    names, dims = _as_list(names), _as_list(dims)
    if len(dims) == 1:
        dims = dims * len(names)
    if len(names) != len(dims):
        raise OptionError(f"names {names!r} and dims {dims!r} must have the same length")
    return names, dims


class BaseNorm:
    """Base class of weight reparametrisations, registered as a module's forward pre-hook.

    Subclasses define ``_target_modules`` (module class -> ``(names, dims)``, the weights that
    :func:`torchdeq.norm.apply_norm` normalises; each subclass gets its own copy of its parent's
    table), :meth:`_reparametrise` (replace the Parameter by the norm's own tensors) and
    ``compute_weight``. Spectral-norm-like subclasses override :meth:`_weight` and :meth:`reset`.

    Args:
        names (list[str]): Names of the parameters to normalise.
        dims (list[int | None]): Per name, the dimension kept by the norm (the output channels).
        learn_scale (bool): If True, the scale is a learnable Parameter.
        target_norm (float): The scale when ``learn_scale`` is False (the norm of each slice).
        clip (bool): If True, the magnitude of the scale is clipped at ``clip_value``.
        clip_value (float): The bound on the scale when ``clip`` is True.

    Example:
        >>> class MaxNorm(BaseNorm):  # w = target_norm * v / max|v|
        ...     _target_modules = {torch.nn.Linear: ('weight', 0)}
        ...     def _reparametrise(self, module, name, dim):
        ...         v = module._parameters.pop(name)
        ...         self._own(module, name + '_raw', torch.nn.Parameter(v.detach()))
        ...     def compute_weight(self, module, name, dim):
        ...         raw = getattr(module, name + '_raw')
        ...         return self.target_norm * raw / raw.abs().max()
        >>> norm = MaxNorm.apply(torch.nn.Linear(3, 2), target_norm=0.5)
    """

    _target_modules: dict[type, tuple[Any, Any]] = {}

    def __init_subclass__(cls, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        # A private copy, so register_norm_module on a subclass never edits its parent's table.
        cls._target_modules = dict(cls._target_modules)

    def __init__(
        self,
        names: list[str],
        dims: list[int | None],
        learn_scale: bool = True,
        target_norm: float = 1.0,
        clip: bool = False,
        clip_value: float = 1.0,
    ):
        if not target_norm > 0:
            raise OptionError(f"target_norm must be > 0, got {target_norm!r}")
        if clip and not clip_value > 0:
            raise OptionError(f"clip_value must be > 0, got {clip_value!r}")
        self.names = list(names)
        self.dims = list(dims)
        self.learn_scale = bool(learn_scale)
        self.target_norm = float(target_norm)
        self.clip = bool(clip)
        self.clip_value = float(clip_value)
        self._owned: list[str] = []  # attribute names of the tensors this norm registered
        self._cache: _Cached | None = None

    @classmethod
    def apply(
        cls,
        module: nn.Module,
        deq_args: Any = None,
        names: str | Sequence[str] = "weight",
        dims: int | Sequence[int] = 0,
        learn_scale: bool = True,
        target_norm: float = 1.0,
        clip: bool = False,
        clip_value: float = 1.0,
    ) -> BaseNorm:
        """Applies the normalisation to parameters of ``module``.

        Args:
            module (torch.nn.Module): The module whose parameters to normalise.
            deq_args (Union[argparse.Namespace, dict, DEQConfig, Any], optional): Configuration
                read with ``get_attr``; its keys ``norm_no_scale``, ``norm_target_norm``,
                ``norm_clip`` and ``norm_clip_value`` win over the keyword arguments.
            names (list or str, optional): Names of the parameters to normalise. Default 'weight'.
            dims (list or int, optional): Per name, the dimension kept by the norm. Default 0.
            learn_scale (bool, optional): If True, learn the scale. Default True.
            target_norm (float, optional): The fixed scale when not learned. Default 1.
            clip (bool, optional): If True, clip the magnitude of the scale. Default False.
            clip_value (float, optional): The bound of the clipped scale. Default 1.

        Returns:
            BaseNorm: The norm instance, registered as a forward pre-hook of ``module``.
        """
        return cls._attach(
            module,
            deq_args,
            names,
            dims,
            learn_scale=learn_scale,
            target_norm=target_norm,
            clip=clip,
            clip_value=clip_value,
        )

    @classmethod
    def _attach(
        cls, module: nn.Module, deq_args: Any, names: Any, dims: Any, **options: Any
    ) -> BaseNorm:
        for option, (key, convert) in _ARG_KEYS.items():
            if option in options and has_attr(deq_args, key):
                options[option] = convert(check_option(key, get_attr(deq_args, key), "apply_norm"))
        names, dims = pair_names_dims(names, dims)
        for i, name in enumerate(names):
            param = module._parameters.get(name)
            if not isinstance(param, nn.Parameter):
                if any(name in hook.names for hook in find_norms(module)):
                    raise RuntimeError(
                        f"parameter {name!r} of {type(module).__name__} is already normalised"
                    )
                raise OptionError(
                    f"{type(module).__name__} has no parameter {name!r}; its parameters: "
                    f"{', '.join(repr(n) for n, p in module._parameters.items() if p is not None)}"
                )
            if dims[i] is not None:
                dims[i] = dims[i] % param.dim() if param.dim() else None
        norm = cls(names, dims, **options)
        for name, dim in zip(norm.names, norm.dims):
            norm._reparametrise(module, name, dim)
        module.register_forward_pre_hook(norm)
        module.register_forward_hook(norm._release)
        with torch.no_grad():
            norm(module, ())
        return norm

    # -- subclass contract --------------------------------------------------------------------

    def _reparametrise(self, module: nn.Module, name: str, dim: int | None) -> None:
        """Replaces Parameter ``name`` by the norm's tensors, registered via :meth:`_own`."""
        raise NotImplementedError

    def _weight(self, module: nn.Module, name: str, dim: int | None) -> torch.Tensor:
        """The effective weight from the current tensors (no power iteration or other update)."""
        return self.compute_weight(module, name, dim)

    def compute_weight(self, module: nn.Module, name: str, dim: int | None) -> torch.Tensor:
        raise NotImplementedError

    # -- helpers for subclasses ---------------------------------------------------------------

    def _own(self, module: nn.Module, attr: str, tensor: torch.Tensor) -> None:
        """Registers ``tensor`` on ``module`` (Parameters as parameters, others as buffers)."""
        if isinstance(tensor, nn.Parameter):
            module.register_parameter(attr, tensor)
        else:
            module.register_buffer(attr, tensor)
        self._owned.append(attr)

    def _scale(self, learned: torch.Tensor | None) -> torch.Tensor | float:
        """The scale of the normalised weight: learned or ``target_norm``, clipped if asked."""
        scale = learned if self.learn_scale else self.target_norm
        if not self.clip:
            return scale
        if isinstance(scale, float):
            return min(scale, self.clip_value)
        return scale.clamp(-self.clip_value, self.clip_value)

    # -- hook, reset, remove ------------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        # Copies and pickles start without the cache: it may hold graph-attached weights, which
        # copy.deepcopy refuses, and the copy's tensors are new ones anyway.
        state = self.__dict__.copy()
        state["_cache"] = None
        return state

    def _weights(self, module: nn.Module) -> list[torch.Tensor]:
        return [self._weight(module, n, d) for n, d in zip(self.names, self.dims)]

    # Eager under torch.compile: the cache check reads tensor versions and pointers, which
    # TorchDynamo would otherwise recompile for every normalised module of a compiled cell.
    @torch.compiler.disable
    def __call__(self, module: nn.Module, inputs: Any) -> None:
        # Runs at every call of the module: read the dicts, not nn.Module.__getattr__.
        params, buffers = module._parameters, module._buffers
        tensors = [params[a] if a in params else buffers[a] for a in self._owned]
        versions = [(t.data_ptr(), t._version) for t in tensors]
        grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
        cache = self._cache
        # Identity too, not only pointers: the cache holds the tensors, so a tensor swapped in
        # (torch.func.functional_call) can never reuse a cached one's memory and version.
        stale = (
            cache is None
            or (grad and not cache.graph)
            or cache.training != module.training
            or cache.versions != versions
            or not all(map(operator.is_, cache.tensors, tensors))
        )
        if stale and grad:
            # The weight's own graph stores its tensors plainly, even inside
            # torch.utils.checkpoint: a checkpoint's recomputation finds the cached weight and
            # would otherwise save fewer tensors than its forward did (a CheckpointError).
            with _outside_saved_tensor_hooks():
                weights = self._weights(module)
            weights = _Reusable.apply(weights, *[t for t in tensors if t.requires_grad])
            detached = [w.detach() for w in weights]
            cache = _Cached(module.training, tensors, versions, list(weights), detached, True)
        elif stale:
            with torch.no_grad():
                weights = self._weights(module)
            cache = _Cached(module.training, tensors, versions, weights, weights, False)
        self._cache = cache
        for name, weight in zip(self.names, cache.weights if grad else cache.detached):
            module.__dict__[name] = weight  # a plain attribute; skips nn.Module.__setattr__

    def _release(self, module: nn.Module, inputs: Any, output: Any) -> None:
        # After forward the module keeps the detached weight, not one holding the autograd graph:
        # the graph lives on through the output alone, and copy.deepcopy(module) keeps working.
        if self._cache is not None:
            for name, weight in zip(self.names, self._cache.detached):
                module.__dict__[name] = weight

    def reset(self, module: nn.Module) -> None:
        """Drops the cached weight, so the next call recomputes it.

        Args:
            module (torch.nn.Module): The module this norm is registered on.
        """
        self._cache = None

    def remove(self, module: nn.Module) -> None:
        """Removes the normalisation, restoring plain Parameters equal to the effective weights.

        Args:
            module (torch.nn.Module): The module to remove the normalisation from.
        """
        with torch.no_grad():
            weights = self._weights(module)
        requires_grad = any(getattr(module, attr).requires_grad for attr in self._owned)
        for attr in self._owned:
            delattr(module, attr)
        for name, weight in zip(self.names, weights):
            module.__dict__.pop(name, None)
            module.register_parameter(name, nn.Parameter(weight.clone(), requires_grad))
        for hooks in (module._forward_pre_hooks, module._forward_hooks):
            for key, hook in list(hooks.items()):
                if hook is self or getattr(hook, "__self__", None) is self:
                    del hooks[key]
        self._owned, self._cache = [], None


def find_norms(module: nn.Module) -> list[BaseNorm]:
    """The norms registered as forward pre-hooks of ``module`` itself (not its children)."""
    return [hook for hook in module._forward_pre_hooks.values() if isinstance(hook, BaseNorm)]
