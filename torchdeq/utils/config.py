"""The DEQ configuration: every option once, with its default, type, range and help.

:class:`DEQConfig` is the one place where TorchDEQ's options are written down.
:func:`~torchdeq.utils.add_deq_args` builds its command-line options from it, the DEQ cores
check their values through :func:`check_option`, and the tests pin the documented signatures
and the zoo's ``conf/train.yaml`` to it.

Every function that takes ``args`` reads it through :func:`get_attr`, so ``args`` can be an
``argparse.Namespace``, a ``dict``, a :class:`DEQConfig`, an OmegaConf ``DictConfig`` (a
``Mapping``; no import needed) or any object with attributes. Keys that ``args`` lacks fall back
to the documented defaults.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from torchdeq.utils.checks import (
    STOP_MODES,
    check_choice,
    check_int,
    check_int_list,
    check_kwargs,
    check_real,
)

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


@dataclasses.dataclass(frozen=True)
class OptionSpec:
    """What one DEQ option is: its command-line group, type, valid values and help.

    Args:
        group (str): The ``add_deq_args`` argument group.
        help (str): One line for ``--help`` and the documentation.
        kind (str): ``'int'``, ``'float'``, ``'str'``, ``'flag'`` (a bool, ``store_true``),
            ``'ints'`` (an int or a list of ints; ``nargs='+'`` on the command line),
            ``'name'`` (a registry key: solver, core or norm; checked by its registry) or
            ``'dict'`` (not a command-line option).
        low (float, optional): Smallest valid value (of every entry, for ``'ints'``).
        strict (bool): ``low`` itself is not valid.
        high (float, optional): Largest valid value.
        choices (tuple, optional): The valid values.
    """

    group: str
    help: str
    kind: str
    low: float | None = None
    strict: bool = False
    high: float | None = None
    choices: tuple | None = None


def _option(default: Any, group: str, kind: str, help: str, **spec: Any) -> Any:
    return dataclasses.field(
        default=default, metadata={"spec": OptionSpec(group, help, kind, **spec)}
    )


_SOLVERS = "DEQ solvers"
_CORE = "DEQ core and gradients"
_REG = "DEQ regularisation"
_NORM = "DEQ normalisation"


@dataclasses.dataclass
class DEQConfig:
    """All options of TorchDEQ with their documented defaults (see :func:`add_deq_args`).

    Each field carries an :class:`~torchdeq.utils.config.OptionSpec`
    (``DEQConfig.spec(name)``): its type, valid range or choices and help. Unknown keys are
    rejected at construction. The object can be passed as ``args`` anywhere.

    Example:
        >>> cfg = DEQConfig(f_solver='anderson', f_max_iter=30)
        >>> cfg.f_tol
        0.001
        >>> DEQConfig.spec('f_stop_mode').choices
        ('abs', 'rel')
    """

    f_solver: str = _option("fixed_point_iter", _SOLVERS, "name", "forward solver")
    b_solver: str = _option("fixed_point_iter", _SOLVERS, "name", "backward (IFT) solver")
    no_stat: bool | None = _option(
        None, _SOLVERS, "flag", "skip solver statistics where the solver allows it"
    )
    f_max_iter: int = _option(40, _SOLVERS, "int", "forward solver steps", low=0)
    b_max_iter: int = _option(40, _SOLVERS, "int", "backward solver steps", low=0)
    f_tol: float = _option(1e-3, _SOLVERS, "float", "forward stopping tolerance", low=0)
    b_tol: float = _option(1e-6, _SOLVERS, "float", "backward stopping tolerance", low=0)
    f_stop_mode: str = _option(
        "abs", _SOLVERS, "str", "residual that stops the forward solve", choices=STOP_MODES
    )
    b_stop_mode: str = _option(
        "abs", _SOLVERS, "str", "residual that stops the backward solve", choices=STOP_MODES
    )
    eval_factor: float = _option(
        1.0,
        _SOLVERS,
        "float",
        "test-time forward steps = f_max_iter * eval_factor",
        low=0,
        strict=True,
    )
    eval_f_max_iter: int = _option(
        0, _SOLVERS, "int", "exact test-time forward steps (overrides eval_factor when > 0)", low=0
    )
    f_solver_kwargs: dict | None = _option(
        None, _SOLVERS, "dict", "forward solver options, e.g. dict(m=5, lam=1e-4) for Anderson"
    )
    b_solver_kwargs: dict | None = _option(None, _SOLVERS, "dict", "backward solver options")
    core: str = _option(
        "sliced", _CORE, "name", "DEQ core: 'sliced', 'indexing' or 'reversible'"
    )
    ift: bool = _option(False, _CORE, "flag", "implicit differentiation (autograd.Function)")
    hook_ift: bool = _option(False, _CORE, "flag", "implicit differentiation via a backward hook")
    grad: Any = _option(
        1, _CORE, "ints", "phantom gradient steps (one value, or one per sampled state)", low=1
    )
    tau: float = _option(
        1.0, _CORE, "float", "phantom gradient damping", low=0, strict=True, high=1
    )
    sup_gap: int = _option(-1, _CORE, "int", "also return every sup_gap-th phantom state if > 0")
    sup_loc: list | None = _option(
        None, _CORE, "ints", "phantom gradient steps whose states to also return", low=1
    )
    n_states: int = _option(1, _CORE, "int", "number of uniformly sampled states", low=1)
    indexing: list | None = _option(
        None, _CORE, "ints", "solver steps at which to sample states (overrides n_states)", low=1
    )
    beta: float = _option(
        0.5, _CORE, "float", "relaxation of core='reversible' (in (0, 2), not 1)", low=0,
        strict=True, high=2,
    )
    gamma: float = _option(0.8, _REG, "float", "fixed-point correction decay", low=0)
    jac_loss_weight: float = _option(
        0.0, _REG, "float", "weight of the Jacobian regularisation", low=0
    )
    jac_loss_freq: float = _option(
        0.0, _REG, "float", "probability of applying the Jacobian regularisation", low=0, high=1
    )
    jac_incremental: int = _option(
        0, _REG, "int", "steps over which the Jacobian loss weight ramps up", low=0
    )
    sradius_mode: bool = _option(False, _REG, "flag", "estimate the spectral radius at evaluation")
    norm_type: str = _option(
        "weight_norm", _NORM, "name", "'weight_norm', 'spectral_norm' or 'none'"
    )
    norm_no_scale: bool = _option(False, _NORM, "flag", "no learnable norm scale")
    norm_clip: bool = _option(False, _NORM, "flag", "clip the learnable norm scale")
    norm_clip_value: float = _option(
        1.0, _NORM, "float", "bound of the clipped scale", low=0, strict=True
    )
    norm_target_norm: float = _option(
        1.0, _NORM, "float", "the scale when it is not learned", low=0, strict=True
    )
    sn_n_power_iters: int = _option(
        1, _NORM, "int", "power iterations per spectral-norm reset", low=0
    )

    @classmethod
    def keys(cls) -> list[str]:
        """The option names, in declaration order."""
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Every option name with its default."""
        return {f.name: f.default for f in dataclasses.fields(cls)}

    @classmethod
    def spec(cls, name: str) -> OptionSpec:
        """The :class:`OptionSpec` of option ``name``.

        Raises:
            OptionError: If ``name`` is not an option.
        """
        check_choice("DEQ option", name, _FIELDS)
        return _FIELDS[name].metadata["spec"]

    @classmethod
    def from_args(cls, args: Any = None, **kwargs: Any) -> DEQConfig:
        """Builds a config from any ``args`` container, then ``kwargs`` (which win).

        Keys of ``args`` that are not DEQ options are ignored (``args`` is usually a whole
        program's configuration); unknown ``kwargs`` are reported (an OptionWarning, or an
        OptionError in strict mode) and dropped.
        """
        kwargs = check_kwargs("DEQConfig", kwargs, cls.keys())
        values = {k: get_attr(args, k, v) for k, v in cls.defaults().items()}
        values.update(kwargs)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_FIELDS = {f.name: f for f in dataclasses.fields(DEQConfig)}


def check_option(name: str, value: Any, where: str = "DEQ") -> Any:
    """Checks a value of DEQ option ``name`` against its :class:`OptionSpec`; returns it.

    Ints and floats come back converted, ``'ints'`` options as a list (None for None or an
    empty list), flags as bools. Registry names (``'name'`` options) and dicts are returned
    as given: their registries and solvers check them.

    Args:
        name (str): A :class:`DEQConfig` field.
        value: The value to check.
        where (str): What received the value, for the message.

    Returns:
        The value, converted.

    Raises:
        OptionError: Naming the option, the value and the valid range or choices.

    Example:
        >>> check_option('grad', [2])
        [2]
        >>> check_option('f_stop_mode', 'rell')
        Traceback (most recent call last):
        ...
        torchdeq.utils.checks.OptionError: unknown f_stop_mode 'rell'; valid choices: 'abs', 'rel'
    """
    spec = DEQConfig.spec(name)
    if spec.choices is not None:
        return check_choice(name, value, spec.choices)
    if spec.kind == "int":
        low = None if spec.low is None else int(spec.low) + int(spec.strict)
        return check_int(where, name, value, -(2**63) if low is None else low)
    if spec.kind == "float":
        return check_real(where, name, value, low=spec.low, strict=spec.strict, high=spec.high)
    if spec.kind == "ints":
        return check_int_list(where, name, value, low=None if spec.low is None else int(spec.low))
    if spec.kind == "flag":
        return None if value is None else bool(value)
    return value
