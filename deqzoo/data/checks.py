"""One check of the sizes a config states against the data, under one naming convention.

A data node states the sizes its net reads (``model.net.in_channels: ${data.in_channels}``):

* ``in_channels``: features of one input element (image channels, node features, coordinate
  dimensions);
* ``num_classes``: classes of a classification (labels of a multi-label one);
* ``out_channels``: channels of a regressed output (e.g. a signal's values).

The data module checks them at ``setup`` with :func:`check_sizes`, so a config that does not
match the data fails before training, with the value to set.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["check_sizes"]


def check_sizes(owner: str, configured: Mapping[str, int | None], found: Mapping[str, int]) -> None:
    """Raises if a configured size differs from the data's; None is not checked.

    Args:
        owner (str): Who checks, for the message (e.g. the data module's class name).
        configured (Mapping[str, int | None]): Sizes from the config, by ``data.`` key.
        found (Mapping[str, int]): The sizes of the data, by the same keys.

    Raises:
        KeyError: If a configured key has no measured size (a typo in the caller).
        ValueError: If a size differs; the message names ``data.<key>=<found value>``.

    Example:
        >>> check_sizes("Images", {"in_channels": 1, "num_classes": None}, {"in_channels": 1,
        ...             "num_classes": 10})
        >>> check_sizes("Images", {"num_classes": 3}, {"num_classes": 10})
        Traceback (most recent call last):
        ...
        ValueError: Images: data.num_classes=3 was configured but the data has 10; set ...
    """
    for key, want in configured.items():
        if key not in found:
            raise KeyError(f"{owner}: no measured size for {key!r}; measured: {sorted(found)}")
        if want is not None and int(want) != int(found[key]):
            raise ValueError(
                f"{owner}: data.{key}={want} was configured but the data has {found[key]}; "
                f"set data.{key}={found[key]}"
            )
