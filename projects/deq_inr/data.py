"""Signals as coordinate -> value tables: an image, a sound, a video, and their data modules.

An implicit neural representation fits one signal: it maps a coordinate (pixel position, time,
frame and position) to the signal's value there. Each data module turns its signal into a
table of ``N`` coordinates in ``[-1, 1]^d`` and ``N`` values, and serves

* training batches of ``batch_size`` coordinates, drawn without replacement from a fresh random
  permutation each time the previous one is used up (an epoch is ``steps_per_epoch`` batches);
* validation and test batches: the whole table in order, in chunks of ``eval_batch_size``.

Every batch is a dict ``{'index': (B,), 'coords': (B, d), 'target': (B, C)}``; ``index`` is the
row of the table, which the DEQ uses to look up its last fixed point for that coordinate.

Data sets (see ``shared/spec/DATA.md``): ``skimage.data.camera()`` (no download); the speech of
Debian ``alsa-utils`` and ``tree.avi`` of ``opencv-doc``, both fetched once with
``python -m deqzoo.data.fetch alsa_speech opencv_samples``; the GIF that ships with
scikit-image stands in for the video when ``tree.avi`` is missing.
"""

from __future__ import annotations

import logging
import os
import wave
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset

from deqzoo.data import DataSet, Debian, check_sizes, require
from torchdeq.utils.checks import OptionError, check_choice

__all__ = [
    "SOURCES",
    "AudioINRData",
    "CoordinateDataModule",
    "ImageINRData",
    "Signal",
    "VideoINRData",
    "coordinate_grid",
    "psnr",
    "read_wav",
]

log = logging.getLogger(__name__)

#: The project's own fetchable data (``python -m deqzoo.data.fetch alsa_speech``); the video
#: comes from the shared ``opencv_samples``.
SOURCES = [
    DataSet(
        "alsa_speech",
        "ALSA test speech: 9 short spoken channel names, 48 kHz mono WAV",
        tuple(
            f"{n}.wav"
            for n in (
                "Front_Center",
                "Front_Left",
                "Front_Right",
                "Noise",
                "Rear_Center",
                "Rear_Left",
                "Rear_Right",
                "Side_Left",
                "Side_Right",
            )
        ),
        Debian("alsa-utils", "/usr/share/sounds/alsa"),
    ),
]

KINDS = ("image", "audio", "video")
SKIMAGE_IMAGES = ("astronaut", "brick", "camera", "cat", "coffee", "grass", "gravel", "moon")
VIDEO_SOURCES = ("opencv_samples", "skimage")
GIF_FALLBACK = "no_time_for_that_tiny.gif"


def coordinate_grid(shape: Sequence[int]) -> Tensor:
    """The coordinates of every cell of a grid, each axis spanning ``[-1, 1]``.

    Args:
        shape (Sequence[int]): The grid's size per axis, e.g. ``(H, W)`` or ``(T, H, W)``.

    Returns:
        Tensor: ``(prod(shape), len(shape))`` float32 coordinates in C order (last axis
        fastest), so row ``i`` is the cell ``np.unravel_index(i, shape)``. An axis of size 1
        sits at 0.

    Example:
        >>> coordinate_grid((2, 3))[:, 1].tolist()
        [-1.0, 0.0, 1.0, -1.0, 0.0, 1.0]
    """
    if not shape or any(int(n) < 1 for n in shape):
        raise ValueError(f"a grid needs sizes >= 1 per axis, got {tuple(shape)}")
    axes = [torch.linspace(-1.0, 1.0, int(n)) if n > 1 else torch.zeros(1) for n in shape]
    mesh = torch.meshgrid(*axes, indexing="ij")
    return torch.stack(mesh, dim=-1).reshape(-1, len(shape))


def psnr(mse: Tensor | float, data_range: float = 1.0) -> Tensor:
    """Peak signal-to-noise ratio in dB: ``10 log10(data_range^2 / mse)``.

    Args:
        mse (Tensor | float): Mean squared error.
        data_range (float, optional): Peak-to-peak range of the signal (1 for images in
            ``[0, 1]``, 2 for audio in ``[-1, 1]``). Default 1.

    Returns:
        Tensor: The PSNR (``inf`` for a perfect fit).

    Example:
        >>> round(float(psnr(0.01)), 6)
        20.0
    """
    mse = torch.as_tensor(mse, dtype=torch.float64)
    return 10.0 * torch.log10(data_range**2 / mse)


@dataclass
class Signal:
    """A signal sampled on a grid, with values scaled to a known range.

    Args:
        values (Tensor): ``(*grid, C)`` float32 samples.
        kind (str): ``'image'`` ``(H, W, C)``, ``'audio'`` ``(T, 1)`` or ``'video'``
            ``(T, H, W, C)``.
        value_range (tuple[float, float]): The range of valid values (predictions are clamped
            to it for metrics and rendering): ``(0, 1)`` for pixels, ``(-1, 1)`` for audio.
        rate (float, optional): Samples per second (audio) or frames per second (video).
    """

    values: Tensor
    kind: Literal["image", "audio", "video"]
    value_range: tuple[float, float] = (0.0, 1.0)
    rate: float | None = None

    def __post_init__(self) -> None:
        check_choice("signal kind", self.kind, KINDS)
        dims = {"image": 3, "audio": 2, "video": 4}[self.kind]
        if self.values.dim() != dims:
            raise ValueError(
                f"a {self.kind} signal has {dims} dimensions (grid + channels), got shape "
                f"{tuple(self.values.shape)}"
            )

    @property
    def grid(self) -> tuple[int, ...]:
        """The sampling grid's shape (without channels)."""
        return tuple(self.values.shape[:-1])

    @property
    def channels(self) -> int:
        return int(self.values.shape[-1])

    @property
    def data_range(self) -> float:
        """Peak-to-peak range, the numerator of the PSNR."""
        return float(self.value_range[1] - self.value_range[0])

    def coords(self) -> Tensor:
        """``(N, d)`` coordinates of the grid, see :func:`coordinate_grid`."""
        return coordinate_grid(self.grid)

    def targets(self) -> Tensor:
        """``(N, C)`` values, row ``i`` at coordinate ``i``."""
        return self.values.reshape(-1, self.channels)

    def unflatten(self, table: Tensor) -> Tensor:
        """Reshapes ``(N, C)`` predictions to the signal's shape, clamped to its range."""
        return table.reshape(self.values.shape).clamp(*self.value_range)


# ------------------------------------------------------------------------------------------------
# readers


def _resize(array: np.ndarray, size: Sequence[int] | None) -> np.ndarray:
    """Anti-aliased resize of ``(H, W[, C])`` to ``size = (H', W')`` (None: unchanged)."""
    if size is None or tuple(size) == array.shape[:2]:
        return array.astype(np.float32)
    from skimage.transform import resize

    out_shape = tuple(int(s) for s in size) + array.shape[2:]
    return resize(array, out_shape, anti_aliasing=True, preserve_range=True).astype(np.float32)


def read_wav(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Reads a PCM WAV file with the standard library, mixing channels down to mono.

    Args:
        path (str | PathLike): The file.

    Returns:
        tuple[np.ndarray, int]: float32 samples in ``[-1, 1]`` of shape ``(T,)``, and the rate.

    Raises:
        ValueError: For a sample width other than 8, 16, 24 or 32 bits.

    Example:
        >>> samples, rate = read_wav("/usr/share/sounds/alsa/Front_Center.wav")  # doctest: +SKIP
    """
    with wave.open(str(path), "rb") as f:
        channels, width, rate = f.getnchannels(), f.getsampwidth(), f.getframerate()
        raw = f.readframes(f.getnframes())
    if width == 3:  # 24-bit: widen to 32 by padding the low byte
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3)
        raw = np.concatenate([np.zeros((len(b), 1), np.uint8), b], axis=1).tobytes()
        width = 4
    dtypes = {1: np.uint8, 2: np.int16, 4: np.int32}
    if width not in dtypes:
        raise ValueError(f"{path}: unsupported sample width {8 * width} bits; valid: 8, 16, 24, 32")
    data = np.frombuffer(raw, dtypes[width]).astype(np.float64)
    # 8-bit WAV is unsigned around 128; wider formats are signed.
    data = (data - 128.0) / 128.0 if width == 1 else data / float(2 ** (8 * width - 1))
    return data.reshape(-1, channels).mean(axis=1).astype(np.float32), rate


def _skimage_data() -> Path:
    import skimage

    return Path(skimage.__file__).parent / "data"


def _read_video(path: Path) -> tuple[list[np.ndarray], float]:
    """All frames of a video as uint8 RGB arrays, and its frame rate (PyAV; GIF via Pillow)."""
    if path.suffix.lower() == ".gif":
        from PIL import Image, ImageSequence

        with Image.open(path) as im:
            frames = [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(im)]
            duration = im.info.get("duration") or 100
        return frames, 1000.0 / duration
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = float(stream.average_rate or 25)
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    return frames, rate


# ------------------------------------------------------------------------------------------------
# batches


class _RandomBatches(IterableDataset):
    """``steps`` batches of coordinates per pass, from a stream of random permutations.

    The stream continues across passes (epochs), so every coordinate is visited once per
    ``N / batch_size`` steps however the epochs are cut.
    """

    def __init__(self, coords: Tensor, targets: Tensor, batch_size: int, steps: int, seed: int):
        self.coords, self.targets = coords, targets
        self.batch_size, self.steps = batch_size, steps
        self.generator = torch.Generator().manual_seed(seed)
        self.order = torch.empty(0, dtype=torch.long)

    def __len__(self) -> int:
        return self.steps

    def _take(self, n: int) -> Tensor:
        parts, need = [], n
        while need > 0:
            if self.order.numel() == 0:
                self.order = torch.randperm(len(self.coords), generator=self.generator)
            parts.append(self.order[:need])
            self.order = self.order[need:]
            need -= parts[-1].numel()
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        for _ in range(self.steps):
            index = self._take(self.batch_size)
            yield {"index": index, "coords": self.coords[index], "target": self.targets[index]}


class _OrderedChunks(IterableDataset):
    """The whole table in order, in chunks of ``batch_size`` rows."""

    def __init__(self, coords: Tensor, targets: Tensor, batch_size: int):
        self.coords, self.targets, self.batch_size = coords, targets, batch_size

    def __len__(self) -> int:
        return -(-len(self.coords) // self.batch_size)

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        for start in range(0, len(self.coords), self.batch_size):
            index = torch.arange(start, min(start + self.batch_size, len(self.coords)))
            yield {"index": index, "coords": self.coords[index], "target": self.targets[index]}


# ------------------------------------------------------------------------------------------------
# data modules


class CoordinateDataModule(L.LightningDataModule):
    """Serves one signal as coordinate batches; subclasses say how to load the signal.

    Args:
        batch_size (int, optional): Coordinates per training step. Default 8192.
        steps_per_epoch (int, optional): Training steps per epoch (None: one pass over the
            coordinates). Validation runs once per epoch. Default None.
        eval_batch_size (int, optional): Coordinates per validation and test batch.
            Default 65536.
        in_channels (int, optional): Expected coordinate dimension; checked at setup
            (:func:`deqzoo.data.checks.check_sizes`; the net's config reads it). Default None (not
            checked).
        out_channels (int, optional): Expected channels of the signal's values; checked at
            setup. Default None.
        seed (int, optional): Seed of the batch order. Default 0.

    Raises:
        ValueError: For a non-positive batch size or steps per epoch.
    """

    def __init__(
        self,
        batch_size: int = 8192,
        steps_per_epoch: int | None = None,
        eval_batch_size: int = 65536,
        in_channels: int | None = None,
        out_channels: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value!r}")
        if steps_per_epoch is not None and int(steps_per_epoch) < 1:
            raise ValueError(f"steps_per_epoch must be >= 1 or None, got {steps_per_epoch!r}")
        self.batch_size, self.eval_batch_size = int(batch_size), int(eval_batch_size)
        self.steps_per_epoch = steps_per_epoch
        self.expected = {"in_channels": in_channels, "out_channels": out_channels}
        self.seed = seed
        self.signal: Signal | None = None
        self.coords: Tensor | None = None
        self.targets: Tensor | None = None
        self._train: _RandomBatches | None = None

    def load_signal(self) -> Signal:
        """Reads the signal; implemented by each subclass."""
        raise NotImplementedError(f"{type(self).__name__} must implement load_signal")

    def setup(self, stage: str | None = None) -> None:
        if self.signal is not None:
            return
        signal = self.load_signal()
        found = {"in_channels": len(signal.grid), "out_channels": signal.channels}
        check_sizes(f"{type(self).__name__}{tuple(signal.values.shape)}", self.expected, found)
        self.signal, self.coords, self.targets = signal, signal.coords(), signal.targets()

    @property
    def n_coords(self) -> int:
        """Number of coordinates ``N`` (after :meth:`setup`)."""
        return len(self.coords)

    def train_dataloader(self) -> DataLoader:
        if self._train is None:
            steps = self.steps_per_epoch or -(-self.n_coords // self.batch_size)
            # Processes of a distributed run draw different coordinates.
            rank = self.trainer.global_rank if self.trainer is not None else 0
            batch = min(self.batch_size, self.n_coords)
            self._train = _RandomBatches(self.coords, self.targets, batch, steps, self.seed + rank)
        return DataLoader(self._train, batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(_OrderedChunks(self.coords, self.targets, self.eval_batch_size), None)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()


class ImageINRData(CoordinateDataModule):
    """An image: ``(row, col) -> grey level`` (or RGB) in ``[0, 1]``.

    Args:
        image (str, optional): A scikit-image sample (``skimage.data.<image>()``), one of
            ``SKIMAGE_IMAGES``. Default ``'camera'`` (512x512 grey).
        path (str, optional): An image file to use instead of ``image``.
        size (Sequence[int], optional): Resize to ``(H, W)`` (anti-aliased). Default
            ``(256, 256)``; None keeps the original size.
        grayscale (bool, optional): Convert colour images to grey. Default True.
        **kwargs: Batching options of :class:`CoordinateDataModule`.

    Example:
        >>> dm = ImageINRData(size=(32, 32), batch_size=256)
        >>> dm.setup()
        >>> batch = next(iter(dm.train_dataloader()))
        >>> tuple(batch["coords"].shape), tuple(batch["target"].shape), dm.n_coords
        ((256, 2), (256, 1), 1024)
    """

    def __init__(
        self,
        image: str = "camera",
        path: str | None = None,
        size: Sequence[int] | None = (256, 256),
        grayscale: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if path is None:
            check_choice("scikit-image sample", image, SKIMAGE_IMAGES)
        self.image, self.path, self.size, self.grayscale = image, path, size, grayscale

    def load_signal(self) -> Signal:
        if self.path is not None:
            from skimage.io import imread

            array = imread(self.path)
        else:
            import skimage.data

            array = getattr(skimage.data, self.image)()
        array = np.asarray(array)
        if array.ndim == 3 and array.shape[2] == 4:  # drop alpha
            array = array[..., :3]
        scale = 255.0 if array.dtype == np.uint8 else float(max(array.max(), 1.0))
        array = array.astype(np.float32) / scale
        if array.ndim == 3 and self.grayscale:
            array = array @ np.array([0.2125, 0.7154, 0.0721], np.float32)  # ITU-R 709 luma
        array = _resize(array, self.size)
        values = torch.from_numpy(array if array.ndim == 3 else array[..., None]).clamp(0, 1)
        return Signal(values.contiguous(), "image", (0.0, 1.0))


class AudioINRData(CoordinateDataModule):
    """A sound: ``time -> amplitude`` in ``[-1, 1]``.

    Args:
        name (str, optional): A file of the ``alsa_speech`` data set without ``.wav``
            (``Front_Center``: 1.4 s of speech at 48 kHz). Default ``'Front_Center'``.
        root (str, optional): The data cache root (``${paths.data_dir}``).
        path (str, optional): A WAV file to use instead of ``name``.
        max_seconds (float, optional): Keep only the first seconds. Default None (all).
        **kwargs: Batching options of :class:`CoordinateDataModule`.

    Raises:
        FileNotFoundError: If the speech files are not fetched (names the fetch command).
    """

    def __init__(
        self,
        name: str = "Front_Center",
        root: str | None = None,
        path: str | None = None,
        max_seconds: float | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.name, self.root, self.path, self.max_seconds = name, root, path, max_seconds

    def load_signal(self) -> Signal:
        path = (
            Path(self.path) if self.path else require("alsa_speech", self.root) / f"{self.name}.wav"
        )
        if not path.is_file():
            raise FileNotFoundError(f"no audio file {path}")
        samples, rate = read_wav(path)
        if self.max_seconds is not None:
            samples = samples[: max(1, int(round(self.max_seconds * rate)))]
        values = torch.from_numpy(samples.copy())[:, None].clamp(-1, 1)
        return Signal(values, "audio", (-1.0, 1.0), rate=float(rate))


class VideoINRData(CoordinateDataModule):
    """A video: ``(frame, row, col) -> RGB`` in ``[0, 1]``.

    Args:
        name (str, optional): A file of ``source``. Default ``'tree.avi'`` (68 frames of
            320x240).
        source (str, optional): Where ``name`` lives: ``'opencv_samples'`` (the fetched data
            set) or ``'skimage'`` (scikit-image's data folder, e.g.
            ``no_time_for_that_tiny.gif``). Default ``'opencv_samples'``.
        root (str, optional): The data cache root (``${paths.data_dir}``).
        path (str, optional): A video file (anything PyAV decodes, or a GIF) instead of ``name``.
        frame_step (int, optional): Keep every n-th frame. Default 1.
        max_frames (int, optional): Keep at most this many frames (after ``frame_step``).
        size (Sequence[int], optional): Resize frames to ``(H, W)``. Default None (unchanged).
        fallback (bool, optional): When the data set is not fetched, use scikit-image's
            ``no_time_for_that_tiny.gif`` (24 frames of 25x14) and log a warning, instead of
            failing. Default True.
        **kwargs: Batching options of :class:`CoordinateDataModule`.

    Raises:
        FileNotFoundError: If the video is missing and ``fallback`` is off or the GIF is absent.
    """

    def __init__(
        self,
        name: str = "tree.avi",
        source: Literal["opencv_samples", "skimage"] = "opencv_samples",
        root: str | None = None,
        path: str | None = None,
        frame_step: int = 1,
        max_frames: int | None = None,
        size: Sequence[int] | None = None,
        fallback: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if int(frame_step) < 1:
            raise OptionError(f"frame_step must be >= 1, got {frame_step!r}")
        self.source = check_choice("video source", source, VIDEO_SOURCES)
        self.name, self.root, self.path = name, root, path
        self.frame_step, self.max_frames, self.size = int(frame_step), max_frames, size
        self.fallback = fallback

    def _locate(self) -> Path:
        if self.path:
            return Path(self.path)
        if self.source == "skimage":
            return _skimage_data() / self.name
        try:
            return require(self.source, self.root) / self.name
        except FileNotFoundError:
            gif = _skimage_data() / GIF_FALLBACK
            if not (self.fallback and gif.is_file()):
                raise
            log.warning("%s not fetched; using scikit-image's %s instead", self.source, gif.name)
            return gif

    def load_signal(self) -> Signal:
        path = self._locate()
        if not path.is_file():
            raise FileNotFoundError(f"no video file {path}")
        frames, rate = _read_video(path)
        frames = frames[:: self.frame_step][: self.max_frames]
        if not frames:
            raise ValueError(f"{path}: no frames left (frame_step={self.frame_step})")
        array = np.stack([_resize(f.astype(np.float32) / 255.0, self.size) for f in frames])
        values = torch.from_numpy(array).clamp(0, 1).contiguous()
        return Signal(values, "video", (0.0, 1.0), rate=rate / self.frame_step)
