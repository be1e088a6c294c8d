"""Writes what a representation learnt: images and video grids as PNG, sound as WAV, and the
PSNR-against-time curves as a plot (matplotlib with the Agg backend: no display needed)."""

from __future__ import annotations

import math
import os
import wave
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from torch import Tensor

from projects.deq_inr.data import Signal

__all__ = [
    "plot_psnr_curves",
    "reconstruction_name",
    "save_reconstruction",
    "video_grid",
    "write_png",
    "write_wav",
]


def write_png(array: np.ndarray, path: str | os.PathLike) -> Path:
    """Writes ``(H, W)`` or ``(H, W, C)`` values in ``[0, 1]`` as an 8-bit PNG."""
    from PIL import Image

    pixels = np.clip(np.rint(np.asarray(array, np.float64) * 255.0), 0, 255).astype(np.uint8)
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[..., 0]
    Image.fromarray(pixels).save(path)
    return Path(path)


def write_wav(samples: np.ndarray, rate: float, path: str | os.PathLike) -> Path:
    """Writes mono samples in ``[-1, 1]`` as a 16-bit PCM WAV file (standard library)."""
    pcm = np.clip(np.rint(np.asarray(samples, np.float64).reshape(-1) * 32767.0), -32768, 32767)
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(int(round(rate)))
        f.writeframes(pcm.astype("<i2").tobytes())
    return Path(path)


def video_grid(frames: np.ndarray, columns: int | None = None, gap: int = 1) -> np.ndarray:
    """Tiles ``(T, H, W, C)`` frames row by row into one ``(rows*H, columns*W, C)`` image.

    Args:
        frames (np.ndarray): The frames.
        columns (int, optional): Frames per row (default: about ``sqrt(T)``).
        gap (int, optional): White pixels between frames. Default 1.

    Returns:
        np.ndarray: The grid; unused cells are white.

    Example:
        >>> video_grid(np.zeros((5, 2, 3, 1)), columns=2, gap=0).shape
        (6, 6, 1)
    """
    t, h, w, c = frames.shape
    columns = columns or math.ceil(math.sqrt(t))
    rows = math.ceil(t / columns)
    grid = np.ones((rows * (h + gap) - gap, columns * (w + gap) - gap, c), frames.dtype)
    for i, frame in enumerate(frames):
        r, col = divmod(i, columns)
        grid[r * (h + gap) : r * (h + gap) + h, col * (w + gap) : col * (w + gap) + w] = frame
    return grid


def reconstruction_name(signal: Signal, stem: str) -> str:
    """The file name of a rendered ``signal``: ``<stem>.wav`` for audio, else ``<stem>.png``."""
    return f"{stem}.wav" if signal.kind == "audio" else f"{stem}.png"


def save_reconstruction(signal: Signal, table: Tensor, path: str | os.PathLike) -> Path:
    """Writes predictions for every coordinate in the signal's own medium.

    Args:
        signal (Signal): The signal that was fitted (its shape, kind, range and rate).
        table (Tensor): ``(N, C)`` predictions, row ``i`` at coordinate ``i``.
        path (str | PathLike): The file, named by :func:`reconstruction_name`: a PNG (image;
            video frames as a grid) or a WAV (audio).

    Returns:
        Path: ``path``.
    """
    values = signal.unflatten(table.detach().float().cpu()).numpy()
    low, high = signal.value_range
    if signal.kind == "audio":
        # Rescale to [-1, 1], the range of PCM samples.
        samples = (values[:, 0] - low) / (high - low) * 2.0 - 1.0
        return write_wav(samples, signal.rate or 16000, path)
    unit = (values - low) / (high - low)
    image = video_grid(unit) if signal.kind == "video" else unit
    return write_png(image, path)


def plot_psnr_curves(
    curves: Mapping[str, Sequence[tuple[float, float]]],
    path: str | os.PathLike,
    title: str = "",
    target: float | None = None,
) -> Path:
    """Plots PSNR against wall-clock time for one or more runs.

    Args:
        curves (Mapping[str, Sequence[tuple[float, float]]]): Label to ``(seconds, dB)`` points.
        path (str | PathLike): The PNG to write.
        title (str, optional): Plot title.
        target (float, optional): Draw a horizontal line at this PSNR.

    Returns:
        Path: ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for label, points in curves.items():
        if len(points):
            seconds, db = zip(*points)
            ax.plot(np.asarray(seconds) / 60.0, db, marker=".", label=label)
    if target is not None:
        ax.axhline(target, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("wall-clock time (min)")
    ax.set_ylabel("PSNR (dB)")
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    if len(curves) > 1:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
