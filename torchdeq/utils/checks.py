"""Option handling: bad values raise, unknown option names warn (or raise in strict mode).

Unknown keyword options are ignored, as the API documents for ``**kwargs``, but never silently:
each one raises an :class:`OptionWarning` naming the option, where it went and the valid
options, once per option and place. Strict mode (:func:`strict`, or the environment variable
``TORCHDEQ_STRICT=1``) turns these warnings into :class:`OptionError`. A bad *value* (an unknown
solver name, ``stop_mode='rell'``, a negative ``max_iter``) always raises.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Mapping
from typing import Any


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
            stacklevel=3,
        )


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
