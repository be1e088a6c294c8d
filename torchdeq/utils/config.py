"""The DEQ configuration: one record of every option that ``add_deq_args`` defines.

Every function that takes ``args`` reads it through :func:`get_attr`, so ``args`` can be an
``argparse.Namespace``, a ``dict``, a :class:`DEQConfig`, an OmegaConf ``DictConfig`` (a
``Mapping``; no import needed) or any object with attributes. Keys that ``args`` lacks fall back
to the documented defaults.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from torchdeq.utils.checks import check_kwargs

_MISSING = object()


def get_attr(args: Any, key: str, default: Any = None) -> Any:
    """Reads ``key`` from a Mapping or an attribute container; ``default`` when absent or None."""
    if args is None:
        return default
    if isinstance(args, Mapping):
        value = args.get(key, _MISSING)
    else:
        value = getattr(args, key, _MISSING)
    return default if value is _MISSING or value is None else value


def has_attr(args: Any, key: str) -> bool:
    """True when ``args`` defines ``key`` with a value other than None."""
    return get_attr(args, key, _MISSING) is not _MISSING


@dataclasses.dataclass
class DEQConfig:
    """All options of TorchDEQ with their documented defaults (see :func:`add_deq_args`).

    Unknown keys are rejected at construction. The object can be passed as ``args`` anywhere.

    Example:
        >>> cfg = DEQConfig(f_solver='anderson', f_max_iter=30)
        >>> cfg.f_tol
        0.001
    """

    # solvers
    f_solver: str = "fixed_point_iter"
    b_solver: str = "fixed_point_iter"
    no_stat: bool | None = None
    f_max_iter: int = 40
    b_max_iter: int = 40
    f_tol: float = 1e-3
    b_tol: float = 1e-6
    f_stop_mode: str = "abs"
    b_stop_mode: str = "abs"
    eval_factor: float = 1.0
    eval_f_max_iter: int = 0
    f_solver_kwargs: dict | None = None
    b_solver_kwargs: dict | None = None
    # computational core and gradients
    core: str = "sliced"
    ift: bool = False
    hook_ift: bool = False
    grad: Any = 1
    tau: float = 1.0
    sup_gap: int = -1
    sup_loc: list | None = None
    n_states: int = 1
    indexing: list | None = None
    beta: float = 0.5  # relaxation of core='reversible'
    # regularisation and monitoring
    gamma: float = 0.8
    jac_loss_weight: float = 0.0
    jac_loss_freq: float = 0.0
    jac_incremental: int = 0
    sradius_mode: bool = False
    # normalisation
    norm_type: str = "weight_norm"
    norm_no_scale: bool = False
    norm_clip: bool = False
    norm_clip_value: float = 1.0
    norm_target_norm: float = 1.0
    sn_n_power_iters: int = 1

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_args(cls, args: Any = None, **kwargs: Any) -> DEQConfig:
        """Builds a config from any ``args`` container, then ``kwargs`` (which win).

        Keys of ``args`` that are not DEQ options are ignored (``args`` is usually a whole
        program's configuration); unknown ``kwargs`` raise :class:`OptionError`.
        """
        check_kwargs("DEQConfig", kwargs, cls.keys())
        values = {k: get_attr(args, k, getattr(cls, k, None)) for k in cls.keys()}
        values.update(kwargs)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
