"""A reader for the IDX format of MNIST-style data sets (gzip-compressed or raw)."""

from __future__ import annotations

import gzip
import os

import numpy as np

__all__ = ["read_idx"]

# IDX type codes -> big-endian numpy dtypes.
_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads an IDX file into an array of its stored shape and type.

    The file may be gzip-compressed whatever its name (Debian recompressed Fashion-MNIST, so
    checksums of the original archives do not apply; the content is the same).

    Args:
        path (str | PathLike): The ``*-idx{1,3}-ubyte[.gz]`` file.

    Returns:
        np.ndarray: E.g. (60000, 28, 28) uint8 images or (60000,) uint8 labels.

    Raises:
        ValueError: If the header is not an IDX header or the data size does not match it.

    Example:
        >>> images = read_idx("data/fashion_mnist/t10k-images-idx3-ubyte.gz")  # doctest: +SKIP
        >>> images.shape, images.dtype  # doctest: +SKIP
        ((10000, 28, 28), dtype('uint8'))

    References:
        LeCun, Cortes, Burges, "The MNIST database of handwritten digits" (file format), 1998.
    """
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise ValueError(f"{path} is not an IDX file (header {data[:4]!r})")
    dtype, ndim = np.dtype(_DTYPES[data[2]]), data[3]
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    if len(data) - offset != dtype.itemsize * int(np.prod(shape)):
        raise ValueError(f"{path}: {len(data) - offset} data bytes do not fit shape {shape}")
    return np.frombuffer(data, dtype, offset=offset).reshape(shape).astype(dtype.newbyteorder("="))
