"""Flow pictures: the Middlebury colour coding and end-point-error maps.

The colour wheel of Baker et al. (IJCV 2011): hue gives the direction, saturation the length
(normalised by the largest flow shown), with the wheel's 55 hues in six ramps
(red-yellow 15, yellow-green 6, green-cyan 4, cyan-blue 11, blue-magenta 13, magenta-red 6).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

__all__ = ["colour_wheel", "epe_image", "flow_to_colour", "write_png"]


def colour_wheel() -> np.ndarray:
    """The Middlebury colour wheel: ``(55, 3)`` RGB values in [0, 255]."""
    ramps = [
        (15, (255, 0, 0), (255, 255, 0)),
        (6, (255, 255, 0), (0, 255, 0)),
        (4, (0, 255, 0), (0, 255, 255)),
        (11, (0, 255, 255), (0, 0, 255)),
        (13, (0, 0, 255), (255, 0, 255)),
        (6, (255, 0, 255), (255, 0, 0)),
    ]
    rows = []
    for n, start, end in ramps:
        t = np.arange(n)[:, None] / n
        rows.append(np.array(start) * (1 - t) + np.array(end) * t)
    return np.concatenate(rows)


def flow_to_colour(
    flow: np.ndarray, max_flow: float | None = None, valid: np.ndarray | None = None
) -> np.ndarray:
    """A ``(2, H, W)`` or ``(H, W, 2)`` flow as an ``(H, W, 3)`` uint8 Middlebury-coded image.

    Args:
        flow (np.ndarray): The flow.
        max_flow (float, optional): The length shown fully saturated (default: the largest).
        valid (np.ndarray, optional): ``(H, W)`` mask; pixels outside it are black.

    Example:
        >>> flow_to_colour(np.zeros((2, 4, 5))).shape
        (4, 5, 3)
    """
    flow = np.asarray(flow, np.float64)
    if flow.shape[0] == 2 and flow.ndim == 3 and flow.shape[-1] != 2:
        flow = flow.transpose(1, 2, 0)
    u, v = flow[..., 0], flow[..., 1]
    mag = np.hypot(u, v)
    scale = max_flow if max_flow else max(float(mag.max()), 1e-6)
    wheel = colour_wheel()
    n = len(wheel)
    angle = np.arctan2(-v, -u) / np.pi  # in [-1, 1]
    pos = (angle + 1) / 2 * (n - 1)
    k0 = np.floor(pos).astype(int)
    k1 = (k0 + 1) % n
    frac = (pos - k0)[..., None]
    colour = ((1 - frac) * wheel[k0] + frac * wheel[k1]) / 255.0
    radius = np.clip(mag / scale, 0, 1)[..., None]
    colour = 1 - radius * (1 - colour)  # white at zero flow
    colour = colour * np.where(radius > 1, 0.75, 1.0)
    image = (255 * colour).astype(np.uint8)
    if valid is not None:
        image[~np.asarray(valid, bool)] = 0
    return image


def epe_image(
    pred: np.ndarray, target: np.ndarray, valid: np.ndarray, max_error: float = 10.0
) -> np.ndarray:
    """End-point error as a grey-to-red ``(H, W, 3)`` uint8 map (black: no ground truth)."""
    err = np.linalg.norm(np.asarray(pred) - np.asarray(target), axis=0)
    t = np.clip(err / max_error, 0, 1)
    image = np.stack([np.ones_like(t), 1 - t, 1 - t], -1) * (1 - 0.5 * t[..., None])
    image = (255 * image).astype(np.uint8)
    image[~np.asarray(valid, bool)] = 0
    return image


def write_png(image: np.ndarray, path: str | os.PathLike) -> Path:
    """Writes an ``(H, W, 3)`` uint8 image as PNG (its folder must exist)."""
    import imageio.v3 as iio

    iio.imwrite(Path(path), image)
    return Path(path)
