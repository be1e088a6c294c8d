"""Readers and writers of the optical-flow file formats of the standard benchmarks.

* Middlebury ``.flo`` (FlyingChairs, MPI Sintel): magic float 202021.25, int32 width and
  height, then row-major ``(H, W, 2)`` float32 (Baker et al., IJCV 2011).
* ``.pfm`` (FlyingThings3D): a text header ``PF`` (colour) or ``Pf`` (grey), ``W H``, a scale
  whose sign gives the byte order (negative: little-endian), then float32 rows bottom to top.
* KITTI-2015 flow PNG: 16-bit RGB, ``u = (R - 2**15) / 64``, ``v = (G - 2**15) / 64``,
  ``B`` = 1 where the flow is valid (Menze and Geiger, CVPR 2015).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

__all__ = [
    "read_flo",
    "read_image",
    "read_kitti_flow",
    "read_pfm",
    "write_flo",
    "write_kitti_flow",
    "write_pfm",
]

FLO_MAGIC = 202021.25


def read_flo(path: str | os.PathLike) -> np.ndarray:
    """Reads a Middlebury ``.flo`` file as a ``(H, W, 2)`` float32 array."""
    with open(path, "rb") as f:
        magic = np.fromfile(f, np.float32, 1)
        if magic.size != 1 or magic[0] != FLO_MAGIC:
            raise ValueError(f"{path} is not a .flo file (magic {magic!r}, expected {FLO_MAGIC})")
        w, h = np.fromfile(f, np.int32, 2)
        data = np.fromfile(f, np.float32, 2 * w * h)
    if data.size != 2 * w * h:
        raise ValueError(f"{path} is truncated: {data.size} values for {w}x{h}x2")
    return data.reshape(h, w, 2)


def write_flo(path: str | os.PathLike, flow: np.ndarray) -> None:
    """Writes a ``(H, W, 2)`` flow as a Middlebury ``.flo`` file."""
    flow = np.asarray(flow, np.float32)
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise ValueError(f"flow must be (H, W, 2), got {flow.shape}")
    with open(path, "wb") as f:
        np.array([FLO_MAGIC], np.float32).tofile(f)
        np.array([flow.shape[1], flow.shape[0]], np.int32).tofile(f)
        flow.tofile(f)


def read_pfm(path: str | os.PathLike) -> np.ndarray:
    """Reads a ``.pfm`` file: ``(H, W, 3)`` for ``PF``, ``(H, W)`` for ``Pf``, top row first."""
    with open(path, "rb") as f:
        header = f.readline().strip()
        if header not in (b"PF", b"Pf"):
            raise ValueError(f"{path} is not a PFM file (header {header!r})")
        dims = re.match(rb"^\s*(\d+)\s+(\d+)\s*$", f.readline())
        if dims is None:
            raise ValueError(f"{path}: malformed PFM size line")
        w, h = map(int, dims.groups())
        scale = float(f.readline().strip())
        data = np.fromfile(f, "<f4" if scale < 0 else ">f4")
    shape = (h, w, 3) if header == b"PF" else (h, w)
    return np.flipud(data.reshape(shape)).astype(np.float32)


def write_pfm(path: str | os.PathLike, array: np.ndarray) -> None:
    """Writes a ``(H, W, 3)`` or ``(H, W)`` float array as little-endian PFM."""
    array = np.asarray(array, np.float32)
    colour = array.ndim == 3
    if not (array.ndim == 2 or (colour and array.shape[2] == 3)):
        raise ValueError(f"PFM holds (H, W) or (H, W, 3) arrays, got {array.shape}")
    with open(path, "wb") as f:
        f.write(b"PF\n" if colour else b"Pf\n")
        f.write(f"{array.shape[1]} {array.shape[0]}\n-1.0\n".encode())
        np.flipud(array).astype("<f4").tofile(f)


def read_kitti_flow(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Reads a KITTI flow PNG: ``(H, W, 2)`` flow and ``(H, W)`` boolean validity."""
    import png

    width, height, rows, _ = png.Reader(filename=str(path)).asDirect()
    data = np.vstack([np.asarray(row, np.uint16) for row in rows]).reshape(height, width, -1)
    if data.shape[2] < 3:
        raise ValueError(f"{path}: a KITTI flow PNG has 3 channels, got {data.shape[2]}")
    flow = (data[..., :2].astype(np.float32) - 2**15) / 64.0
    return flow, data[..., 2] > 0


def write_kitti_flow(path: str | os.PathLike, flow: np.ndarray, valid: np.ndarray) -> None:
    """Writes a flow and its validity as a KITTI 16-bit PNG."""
    import png

    h, w = flow.shape[:2]
    data = np.zeros((h, w, 3), np.uint16)
    data[..., :2] = np.clip(np.round(flow * 64.0 + 2**15), 0, 2**16 - 1)
    data[..., 2] = valid
    with open(path, "wb") as f:
        png.Writer(w, h, bitdepth=16, greyscale=False).write(f, data.reshape(h, w * 3).tolist())


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Reads an image file as ``(H, W, 3)`` float32 in [0, 1] (grey is replicated)."""
    import imageio.v3 as iio

    image = np.asarray(iio.imread(Path(path)))
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    image = image[..., :3]
    scale = 65535.0 if image.dtype == np.uint16 else 255.0
    return image.astype(np.float32) / scale
