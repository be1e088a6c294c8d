"""Option handling: bad values raise, unknown option names warn (or raise in strict mode).

Unknown keyword options are ignored, as the API documents for ``**kwargs``, but never silently:
each one raises an :class:`OptionWarning` naming the option, where it went and the valid
options, once per option and place. Strict mode (:func:`strict`, or the environment variable
``TORCHDEQ_STRICT=1``) turns these warnings into :class:`OptionError`. A bad *value* (an unknown
solver name, ``stop_mode='rell'``, a negative ``max_iter``) always raises.
"""

from __future__ import annotations

import math
import operator
import os
import sys
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

STOP_MODES = ("abs", "rel")


class OptionError(ValueError, AssertionError):
    """An unknown option name or an invalid option value.

    It is a ``ValueError`` (what Python code expects for a bad value) and an ``AssertionError``
    (what the documented API promises for unknown registry keys), so either ``except`` works.
    """


class OptionWarning(UserWarning):
    """An unknown option name that was ignored (an :class:`OptionError` in strict mode)."""


_STRICT_ENV = "TORCHDEQ_STRICT"
_strict: bool | None = None  # None: read the environment variable
_warned: set[tuple[str, str]] = set()


def is_strict() -> bool:
    """Whether unknown options raise: set by :func:`strict`, else ``TORCHDEQ_STRICT``."""
    if _strict is not None:
        return _strict
    return os.environ.get(_STRICT_ENV, "").strip().lower() in ("1", "true", "yes", "on")


class _Setting:
    """The strict-mode setting made by :func:`strict`; a context manager that undoes it."""

    def __init__(self, enabled: bool, previous: bool | None):
        self.enabled, self.previous = enabled, previous

    def __enter__(self) -> _Setting:
        return self

    def __exit__(self, *exc: Any) -> None:
        global _strict
        _strict = self.previous

    def __repr__(self) -> str:
        return f"strict({self.enabled})"


def strict(enabled: bool = True) -> _Setting:
    """Turns the warnings on unknown options into errors (``enabled=True``) or back.

    The setting takes effect at the call and holds for the process (it wins over the
    environment variable ``TORCHDEQ_STRICT=1``); used as a context manager, it is undone on exit.

    Args:
        enabled (bool): Raise :class:`OptionError` on unknown options. Default True.

    Returns:
        A context manager that restores the previous setting on exit.

    Example:
        >>> with strict(False):
        ...     is_strict()
        False
    """
    global _strict
    previous, _strict = _strict, bool(enabled)
    return _Setting(_strict, previous)


def report_unknown(where: str, names: Iterable[str], valid: Iterable[str]) -> None:
    """Reports option names that ``where`` does not know and is about to ignore.

    Warns with :class:`OptionWarning` once per option and place, or raises
    :class:`OptionError` in strict mode.

    Args:
        where (str): What received the options (e.g. ``"solver 'anderson' (solver_kwargs)"``).
        names (Iterable[str]): The unknown option names.
        valid (Iterable[str]): The options ``where`` knows.

    Raises:
        OptionError: In strict mode, if ``names`` is not empty.
    """
    names = list(names)
    if not names:
        return
    listed = ", ".join(repr(k) for k in names)
    valid = _fmt(valid) or "none"
    if is_strict():
        raise OptionError(f"{where} got unknown option(s) {listed}; valid options: {valid}")
    for name in names:
        if (where, name) in _warned:
            continue
        _warned.add((where, name))
        warnings.warn(
            f"{where} ignores unknown option {name!r}; valid options: {valid} "
            f"(torchdeq.utils.strict(True) or {_STRICT_ENV}=1 makes this an error)",
            OptionWarning,
            stacklevel=_caller_level(),
        )


def _library_dirs() -> tuple[str, ...]:
    dirs = [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
    torch = sys.modules.get("torch")  # nn.Module.__call__ sits between user code and forward
    if torch is not None and getattr(torch, "__file__", None):
        dirs.append(os.path.dirname(os.path.abspath(torch.__file__)))
    return tuple(d + os.sep for d in dirs)


def _caller_level() -> int:
    """The ``stacklevel`` of the first frame outside torchdeq and torch: the user's call."""
    skip = _library_dirs()
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(skip):
        frame, level = frame.f_back, level + 1
    return level


def _fmt(choices: Iterable[Any]) -> str:
    return ", ".join(repr(c) for c in sorted(choices, key=str))


def check_choice(what: str, value: Any, choices: Iterable[Any]) -> Any:
    """Returns ``value`` if it is one of ``choices``; raises :class:`OptionError` otherwise."""
    choices = list(choices)
    if value not in choices:
        raise OptionError(f"unknown {what} {value!r}; valid choices: {_fmt(choices)}")
    return value


def check_kwargs(where: str, kwargs: Mapping[str, Any], valid: Iterable[str]) -> dict[str, Any]:
    """Returns the items of ``kwargs`` named in ``valid``; reports the others.

    Every other key goes to :func:`report_unknown` (a warning, an error in strict mode).
    """
    valid = set(valid)
    report_unknown(where, [k for k in kwargs if k not in valid], valid)
    return {k: v for k, v in kwargs.items() if k in valid}


class Registry(dict):
    """A name -> object table whose failed look-ups list the registered names.

    Args:
        kind (str): What the entries are, used in error messages (e.g. ``"solver"``).
    """

    def __init__(self, kind: str, entries: Mapping[str, Any] | None = None):
        super().__init__(entries or {})
        self.kind = kind

    def register(self, key: str, value: Any) -> None:
        if not isinstance(key, str):
            raise OptionError(f"{self.kind} names must be strings, got {key!r}")
        self[key] = value

    def lookup(self, key: str) -> Any:
        check_choice(self.kind, key, self.keys())
        return self[key]


def check_int(where: str, name: str, value: Any, low: int) -> int:
    """Returns ``value`` as an int if it is an integer ``>= low``; raises OptionError otherwise.

    Integral floats (``3.0``, what some configuration files give) count as integers.
    """
    try:
        as_int = None if isinstance(value, bool) else operator.index(value)
    except TypeError:
        as_int = int(value) if isinstance(value, float) and value.is_integer() else None
    if as_int is None or as_int < low:
        raise OptionError(f"{where}: {name} must be an integer >= {low}, got {value!r}")
    return as_int


def check_real(
    where: str,
    name: str,
    value: Any,
    low: float | None = None,
    strict: bool = False,
    high: float | None = None,
) -> float:
    """Returns ``value`` as a float if it is a finite real in the range.

    The range is above ``low`` (or equal, unless ``strict``) and at most ``high``.

    Raises:
        OptionError: Naming ``value`` and the valid range.
    """
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if strict else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        bound = "" if low is None else f" {'>' if strict else '>='} {low}"
        bound += "" if high is None else f"{' and' if bound else ''} <= {high}"
        raise OptionError(f"{where}: {name} must be a finite number{bound}, got {value!r}")
    return float(value)


def check_stop_mode(value: Any) -> str:
    """Returns ``value`` if it is ``'abs'`` or ``'rel'``; raises :class:`OptionError` otherwise."""
    return check_choice("stop_mode", value, STOP_MODES)


def check_indexing(where: str, indexing: Any) -> list[int]:
    """Returns ``indexing`` as a list of step numbers ``>= 1`` (``[]`` for None)."""
    if indexing is None:
        return []
    if isinstance(indexing, (str, bytes)) or not isinstance(indexing, Sequence):
        raise OptionError(
            f"{where}: indexing must be None or a list of steps >= 1, got {indexing!r}"
        )
    return [check_int(where, "every indexing entry", i, 1) for i in indexing]


def check_int_list(where: str, name: str, value: Any, low: int | None = None) -> list[int] | None:
    """``value`` (an int or a sequence of ints, each ``>= low``) as a list; None for None or [].

    Raises:
        OptionError: Naming ``value`` if it is not an int or a sequence of ints.
    """
    if value is None:
        return None
    values = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value]
    bad = [
        v
        for v in values
        if isinstance(v, bool)
        or not isinstance(v, (int, float))
        or int(v) != v
        or (low is not None and v < low)
    ]
    if bad:
        bound = "" if low is None else f" >= {low}"
        raise OptionError(f"{where}: {name} must be an int or a list of ints{bound}, got {value!r}")
    return [int(v) for v in values] or None
