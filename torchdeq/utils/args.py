"""Command-line options of TorchDEQ for ``argparse``, generated from :class:`DEQConfig`."""

from __future__ import annotations

import argparse
from typing import Any

from torchdeq.utils.config import DEQConfig

_TYPES = {"int": int, "float": float, "str": str, "name": str}


def command_line_default(name: str) -> Any:
    """The ``add_deq_args`` default of option ``name``: the DEQConfig default, with list
    options as lists (``grad=[1]``, ``indexing=[]``), the form ``nargs='+'`` parses to."""
    default = DEQConfig.defaults()[name]
    if DEQConfig.spec(name).kind == "ints":
        return [] if default is None else [default]
    return default


def add_deq_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Adds every TorchDEQ option, with its documented default, to ``parser``.

    One option per field of :class:`~torchdeq.utils.config.DEQConfig` (except the solver
    option dicts), with its type, choices and help. Flags are ``store_true``; ``grad``,
    ``sup_loc`` and ``indexing`` take one or more ints and default to ``[1]``, ``[]`` and
    ``[]``, which ``get_deq`` reads as ``1``, None and None. So ``get_deq(parser.parse_args([]))``
    and ``get_deq()`` build the same DEQ.

    Args:
        parser (argparse.ArgumentParser): The parser to decorate.

    Returns:
        argparse.ArgumentParser: The same parser, for chaining.

    Example:
        >>> parser = argparse.ArgumentParser()
        >>> args = add_deq_args(parser).parse_args(['--f_solver', 'anderson', '--grad', '2'])
        >>> args.f_solver, args.f_max_iter, args.grad, args.indexing
        ('anderson', 40, [2], [])
    """
    groups: dict[str, argparse._ArgumentGroup] = {}
    for name in DEQConfig.keys():
        spec = DEQConfig.spec(name)
        if spec.kind == "dict":
            continue
        if spec.group not in groups:
            groups[spec.group] = parser.add_argument_group(spec.group)
        options: dict[str, Any] = {"default": command_line_default(name), "help": spec.help}
        if spec.kind == "flag":
            options["action"] = "store_true"
        elif spec.kind == "ints":
            options.update(type=int, nargs="+")
        else:
            options["type"] = _TYPES[spec.kind]
        if spec.choices is not None:
            options["choices"] = list(spec.choices)
        groups[spec.group].add_argument(f"--{name}", **options)
    return parser
