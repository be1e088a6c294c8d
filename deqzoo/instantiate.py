"""Builders that turn config groups with several named entries into objects."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import hydra
from omegaconf import DictConfig

__all__ = ["instantiate_named"]


def instantiate_named(cfg: Mapping[str, Any] | DictConfig | None, kind: str) -> list[Any]:
    """Instantiates every entry of a ``name: {_target_: ...}`` config node.

    Entries set to null are skipped, so a debug config or the command line can drop one
    (``callbacks.lr_monitor=null``).

    Args:
        cfg (Mapping | DictConfig | None): The node, e.g. ``cfg.callbacks``; None gives ``[]``.
        kind (str): What the entries are, for error messages (``'callback'``, ``'logger'``).

    Returns:
        list[Any]: The objects, in the node's order.

    Raises:
        TypeError: If an entry is not a config with a ``_target_``.

    Example:
        >>> instantiate_named({"lr": {"_target_": "datetime.timedelta", "days": 1}}, "x")
        [datetime.timedelta(days=1)]
    """
    if not cfg:
        return []
    if not isinstance(cfg, Mapping | DictConfig):
        raise TypeError(f"{kind} config must be a mapping of name -> config, got {cfg!r}")
    objects = []
    for name, entry in cfg.items():
        if entry is None:
            continue
        if not isinstance(entry, Mapping | DictConfig) or "_target_" not in entry:
            raise TypeError(f"{kind} {name!r} needs a _target_, got {entry!r}")
        objects.append(hydra.utils.instantiate(entry))
    return objects
