"""Weight normalisation for DEQ layers: apply, reset, remove and register normalisations.

Example:
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    >>> apply_norm(model, 'weight_norm', filter_out=['1'])
    >>> reset_norm(model)   # at the start of every training iteration
    >>> remove_norm(model)  # back to plain Parameters, same function
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from torch import nn

from torchdeq.norm.base import BaseNorm, find_norms, pair_names_dims
from torchdeq.norm.spectral_norm import SpectralNorm
from torchdeq.norm.weight_norm import WeightNorm
from torchdeq.utils.checks import OptionError, Registry, check_kwargs
from torchdeq.utils.config import get_attr

__all__ = [
    "BaseNorm",
    "SpectralNorm",
    "WeightNorm",
    "apply_norm",
    "register_norm",
    "register_norm_module",
    "remove_norm",
    "reset_norm",
]

# 'none' maps to None: apply_norm then leaves the model as it is.
_norm_class = Registry(
    "norm_type", {"weight_norm": WeightNorm, "spectral_norm": SpectralNorm, "none": None}
)

# Arguments of ``apply`` that apply_norm itself supplies.
_SUPPLIED = {"module", "deq_args", "names", "dims"}


def _norm_options(norm_class: type) -> set[str] | None:
    """The keyword arguments ``norm_class.apply`` accepts; None if it takes ``**kwargs``."""
    params = inspect.signature(norm_class.apply).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params} - _SUPPLIED


def _as_strings(value: str | Sequence[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def _is_norm(hook: Any) -> bool:
    if isinstance(hook, BaseNorm):
        return True
    return any(cls is not None and isinstance(hook, cls) for cls in _norm_class.values())


def apply_norm(
    model: nn.Module,
    norm_type: str = "weight_norm",
    prefix_filter_out: str | Sequence[str] | None = None,
    filter_out: str | Sequence[str] | None = None,
    args: Any = None,
    **norm_kwargs: Any,
) -> None:
    """Auto applies normalisation to all weights of the supported layers of ``model``.

    The layers and weights normalised are those of the norm class's ``_target_modules`` table,
    matched by exact module type (a subclass of ``nn.Linear``, for instance, is left alone
    unless registered with :func:`register_norm_module`: ``nn.MultiheadAttention`` reads its
    ``out_proj.weight`` without calling ``out_proj``, so a hook there would never run). A weight
    is skipped when its qualified name (``"<module name>.<param name>"``) contains any string of
    ``filter_out`` or starts with any string of ``prefix_filter_out``.

    Args:
        model (torch.nn.Module): Model to apply normalisation to.
        norm_type (str, optional): 'weight_norm', 'spectral_norm', 'none' or a registered name.
            Default 'weight_norm'.
        prefix_filter_out (list or str, optional): Prefixes of weight names to skip.
            Default None.
        filter_out (list or str, optional): Substrings of weight names to skip. Default None.
        args (Union[argparse.Namespace, dict, DEQConfig, Any], optional): Configuration read with
            ``get_attr``: ``norm_type``, ``norm_no_scale``, ``norm_clip``, ``norm_clip_value``,
            ``norm_target_norm`` and ``sn_n_power_iters``. Priority: args > norm_kwargs.
            Default None.
        **norm_kwargs: Keyword arguments of the norm class's ``apply`` (for the built-in norms
            ``learn_scale``, ``target_norm``, ``clip``, ``clip_value``; spectral norm also
            ``n_power_iterations``, ``eps``). Ignored for 'none'.

    Raises:
        OptionError: If ``norm_type`` is not registered or a keyword argument is unknown
            (OptionError is an AssertionError and a ValueError).
        RuntimeError: If a weight is already normalised.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
        >>> apply_norm(model, 'spectral_norm', prefix_filter_out='1', learn_scale=False)
        >>> sorted(n for n, _ in model.named_parameters())
        ['0.bias', '0.weight_orig', '1.bias', '1.weight']
    """
    norm_type = get_attr(args, "norm_type", norm_type)
    norm_class = _norm_class.lookup(norm_type)
    if norm_class is None:
        return
    valid = _norm_options(norm_class)
    if valid is not None:
        check_kwargs(f"apply_norm(norm_type={norm_type!r})", norm_kwargs, valid)
    prefixes, substrings = _as_strings(prefix_filter_out), _as_strings(filter_out)

    def kept(qualified: str) -> bool:
        return not (qualified.startswith(prefixes) or any(s in qualified for s in substrings))

    for module_name, module in list(model.named_modules()):
        entry = norm_class._target_modules.get(type(module))
        if entry is None:
            continue
        normed = {name for norm in find_norms(module) for name in norm.names}
        names, dims = [], []
        for name, dim in zip(*pair_names_dims(*entry)):
            qualified = f"{module_name}.{name}" if module_name else name
            # Optional parameters (``bias=False``) are None: nothing to normalise. Normalised
            # ones go on, so that apply raises instead of silently keeping the first norm.
            present = module._parameters.get(name) is not None or name in normed
            if kept(qualified) and present:
                names.append(name)
                dims.append(dim)
        if names:
            norm_class.apply(module, deq_args=args, names=names, dims=dims, **norm_kwargs)


def reset_norm(model: nn.Module) -> None:
    """Auto resets the normalisation of a given DEQ model (before each training iteration).

    Drops every cached weight; spectral norms in training mode also refine their estimate of
    the largest singular value.

    Args:
        model (torch.nn.Module): Model to reset normalisation.

    Example:
        >>> model = torch.nn.Linear(4, 4)
        >>> apply_norm(model, 'spectral_norm')
        >>> reset_norm(model)
    """
    for module in model.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if _is_norm(hook):
                hook.reset(module)


def remove_norm(model: nn.Module) -> None:
    """Removes the normalisation of a given DEQ model.

    Every normalised weight becomes a plain Parameter of its former name, equal to the current
    effective weight, so the model computes the same function.

    Args:
        model (torch.nn.Module): A DEQ model to remove normalisation.

    Example:
        >>> model = torch.nn.Linear(4, 4)
        >>> apply_norm(model)
        >>> remove_norm(model)
        >>> sorted(n for n, _ in model.named_parameters())
        ['bias', 'weight']
    """
    for module in model.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if _is_norm(hook):
                hook.remove(module)


def register_norm(norm_type: str, norm_class: type | None) -> None:
    """Registers a user-defined normalisation class for :func:`apply_norm`.

    The class needs a ``_target_modules`` dict and a classmethod ``apply(module, deq_args=None,
    names='weight', dims=0, **options)`` that registers the instance as a forward pre-hook with
    ``reset(module)`` and ``remove(module)`` methods; subclassing :class:`BaseNorm` provides all
    but the reparametrisation itself. None registers a name that normalises nothing.

    Args:
        norm_type (str): The name of the normalisation, used as ``apply_norm``'s ``norm_type``.
        norm_class (type): The class defining the normalisation.

    Raises:
        OptionError: If ``norm_type`` is not a string or ``norm_class`` lacks ``apply`` or
            ``_target_modules``.

    Example:
        >>> class UnitNorm(WeightNorm): ...
        >>> register_norm('unit_norm', UnitNorm)
    """
    if norm_class is not None and not (
        callable(getattr(norm_class, "apply", None))
        and isinstance(getattr(norm_class, "_target_modules", None), dict)
    ):
        raise OptionError(
            f"norm class {norm_class!r} needs a classmethod 'apply' and a dict '_target_modules'"
        )
    _norm_class.register(norm_type, norm_class)


def register_norm_module(
    module_class: type,
    norm_type: str,
    names: str | Sequence[str] = "weight",
    dims: int | Sequence[int] = 0,
) -> None:
    """Registers a to-be-normed module class for a normalisation in :func:`apply_norm`.

    Args:
        module_class (type): Module class to normalise (matched by exact type).
        norm_type (str): The registered normalisation that handles ``module_class``.
        names (str or list, optional): Names of the parameters to normalise. Default 'weight'.
        dims (int or list, optional): Per name, the dimension kept by the norm (the output
            channels). Default 0.

    Raises:
        OptionError: If ``norm_type`` is not registered or is 'none'-like (no class), or if
            ``names`` and ``dims`` are lists of different lengths.

    Example:
        >>> register_norm_module(torch.nn.Bilinear, 'weight_norm', 'weight', 0)
    """
    norm_class = _norm_class.lookup(norm_type)
    if norm_class is None:
        raise OptionError(f"norm_type {norm_type!r} normalises nothing; it takes no modules")
    pair_names_dims(names, dims)
    norm_class._target_modules[module_class] = (names, dims)
