"""Validation helpers: every bad option names the value and the valid choices."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


class OptionError(ValueError, AssertionError):
    """An unknown option name or an invalid option value.

    It is a ``ValueError`` (what Python code expects for a bad value) and an ``AssertionError``
    (what the documented API promises for unknown registry keys), so either ``except`` works.
    """


def _fmt(choices: Iterable[Any]) -> str:
    return ", ".join(repr(c) for c in sorted(choices, key=str))


def check_choice(what: str, value: Any, choices: Iterable[Any]) -> Any:
    """Returns ``value`` if it is one of ``choices``; raises :class:`OptionError` otherwise."""
    choices = list(choices)
    if value not in choices:
        raise OptionError(f"unknown {what} {value!r}; valid choices: {_fmt(choices)}")
    return value


def check_kwargs(where: str, kwargs: Mapping[str, Any], valid: Iterable[str]) -> None:
    """Raises :class:`OptionError` naming every key of ``kwargs`` not in ``valid``."""
    valid = set(valid)
    unknown = [k for k in kwargs if k not in valid]
    if unknown:
        names = ", ".join(repr(k) for k in unknown)
        raise OptionError(f"{where} got unknown option(s) {names}; valid options: {_fmt(valid)}")


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
