"""Data for the DEQ Zoo: the offline catalogue, fetching and caching, shared readers.

* :func:`require` / :func:`catalogue` / ``python -m deqzoo.data.fetch``: registry-only data
  sets, the shared ones and those the projects declare (``SOURCES`` in their ``data.py``).
* :func:`check_sizes`: configured sizes (``in_channels``, ``num_classes``, ...) against the data.
* :func:`read_idx`: MNIST-style IDX files.
* :class:`ImageDataModule` / :func:`load_image_set`: in-memory image classification.

The readers are imported on first use, so the fetch command does not pay for Lightning.
"""

from __future__ import annotations

import importlib
from typing import Any

from deqzoo.data.checks import check_sizes
from deqzoo.data.sources import (
    DATASETS,
    DataSet,
    Debian,
    PyPI,
    catalogue,
    data_root,
    fetch_command,
    lookup,
    require,
)

__all__ = [
    "DATASETS",
    "DataSet",
    "Debian",
    "PyPI",
    "catalogue",
    "check_sizes",
    "lookup",
    "IMAGE_SETS",
    "ImageDataModule",
    "ImageSet",
    "data_root",
    "fetch_command",
    "load_image_set",
    "random_crop_flip",
    "read_idx",
    "require",
]

_LAZY = {
    "read_idx": "deqzoo.data.idx",
    "IMAGE_SETS": "deqzoo.data.images",
    "ImageDataModule": "deqzoo.data.images",
    "ImageSet": "deqzoo.data.images",
    "load_image_set": "deqzoo.data.images",
    "random_crop_flip": "deqzoo.data.images",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'deqzoo.data' has no attribute {name!r}")
