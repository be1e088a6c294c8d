"""Utilities: the DEQ configuration and its argparse options, option handling, memory and
initialisation helpers."""

from torchdeq.utils.args import add_deq_args
from torchdeq.utils.checks import OptionError, OptionWarning, is_strict, strict
from torchdeq.utils.config import DEQConfig, get_attr
from torchdeq.utils.init import mixed_init
from torchdeq.utils.mem import mem_gc

__all__ = [
    "DEQConfig",
    "OptionError",
    "OptionWarning",
    "add_deq_args",
    "get_attr",
    "is_strict",
    "mem_gc",
    "mixed_init",
    "strict",
]
