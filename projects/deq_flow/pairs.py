"""Real image pairs with measured ground truth, and the standard flow metrics.

* Motorcycle (Middlebury 2014 stereo, ``skimage.data.stereo_motorcycle()``, 741x500): left ->
  right, flow ``(-d, 0)`` where the disparity ``d`` is finite (Scharstein et al., GCPR 2014).
* Aloe (Middlebury 2006 stereo, the OpenCV samples' ``aloeL/aloeR/aloeGT``, 1282x1110): left ->
  right, flow ``(-g, 0)`` where ``g = aloeGT.png > 0`` (0 marks unknown/occluded). The PNG stores
  the disparity in full-resolution pixels (scale 1): warping the right image back with ``s * g``
  gives the lowest photometric error at ``s = 1`` among 0.25-3 (8.9 grey levels against 31-37),
  and within 0.9-1.1 too (``tests/projects/deq_flow/test_data.py`` checks it).
* Graffiti 1 -> 3 (Mikolajczyk et al., IJCV 2005, the OpenCV samples' ``graf1/graf3``,
  800x640): a planar scene, so the homography ``H1to3p.xml`` gives the flow everywhere its image
  stays inside frame 3.

Metrics: end-point error (mean Euclidean flow error over pixels with ground truth) and KITTI's
F1-all (percentage of outliers: error > 3 px and > 5% of the true flow's length).

References:
    Scharstein, Pal. Learning Conditional Random Fields for Stereo. CVPR 2007 (Aloe).
    Menze, Geiger. Object Scene Flow for Autonomous Vehicles. CVPR 2015 (F1-all).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .formats import read_image

__all__ = [
    "REAL_PAIRS",
    "FlowPair",
    "end_point_error",
    "f1_all",
    "homography_flow",
    "load_real_pair",
    "read_opencv_matrix",
    "resize_flow",
    "resize_images",
]

REAL_PAIRS = ("motorcycle", "aloe", "graffiti")


@dataclass
class FlowPair:
    """A pair of ``(3, H, W)`` images in [0, 1], its ``(2, H, W)`` flow and ``(H, W)`` mask."""

    name: str
    image1: Tensor
    image2: Tensor
    flow: Tensor
    valid: Tensor


def _tensor(image: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(image, np.float32)).permute(2, 0, 1)


def read_opencv_matrix(path: str | Path, name: str | None = None) -> np.ndarray:
    """Reads a matrix from an OpenCV FileStorage XML file (``<rows>``, ``<cols>``, ``<data>``)."""
    text = Path(path).read_text()
    block = text if name is None else text[text.index(f"<{name}") :]
    rows = int(re.search(r"<rows>\s*(\d+)", block).group(1))
    cols = int(re.search(r"<cols>\s*(\d+)", block).group(1))
    data = re.search(r"<data>(.*?)</data>", block, re.S).group(1).split()
    return np.array([float(v) for v in data[: rows * cols]]).reshape(rows, cols)


def homography_flow(matrix: np.ndarray, height: int, width: int) -> tuple[Tensor, Tensor]:
    """The flow ``H x - x`` of a homography and where ``H x`` lands inside the frame."""
    ys, xs = np.mgrid[:height, :width].astype(np.float64)
    p = np.stack([xs, ys, np.ones_like(xs)], -1) @ matrix.T
    tx, ty = p[..., 0] / p[..., 2], p[..., 1] / p[..., 2]
    flow = np.stack([tx - xs, ty - ys]).astype(np.float32)
    valid = (tx >= 0) & (tx <= width - 1) & (ty >= 0) & (ty <= height - 1) & (p[..., 2] > 0)
    return torch.from_numpy(flow), torch.from_numpy(valid)


def _stereo(name: str, left: np.ndarray, right: np.ndarray, disparity: np.ndarray) -> FlowPair:
    valid = np.isfinite(disparity)
    flow = np.stack([-np.where(valid, disparity, 0.0), np.zeros_like(disparity)])
    return FlowPair(
        name,
        _tensor(left),
        _tensor(right),
        torch.from_numpy(flow.astype(np.float32)),
        torch.from_numpy(valid),
    )


def load_real_pair(name: str, opencv_root: str | Path | None = None) -> FlowPair:
    """Loads one evaluation pair at full resolution.

    Args:
        name (str): ``'motorcycle'``, ``'aloe'`` or ``'graffiti'``.
        opencv_root (str or Path, optional): Folder of the OpenCV samples (default: the
            fetched ``opencv_samples`` set; missing files raise with the fetch command).

    Returns:
        FlowPair: The pair.
    """
    if name not in REAL_PAIRS:
        raise ValueError(f"unknown real pair {name!r}; valid choices: {list(REAL_PAIRS)}")
    if name == "motorcycle":
        import skimage.data

        left, right, disparity = skimage.data.stereo_motorcycle()
        return _stereo(name, left / 255.0, right / 255.0, disparity)
    if opencv_root is None:
        from deqzoo.data.sources import require

        opencv_root = require("opencv_samples")
    root = Path(opencv_root)
    if name == "aloe":
        import imageio.v3 as iio

        gt = np.asarray(iio.imread(root / "aloeGT.png"), np.float64)
        if gt.ndim == 3:
            gt = gt[..., 0]
        # Scale 1: aloeGT.png holds full-resolution disparities (see the module docstring).
        disparity = np.where(gt > 0, gt, np.nan)
        return _stereo(
            name, read_image(root / "aloeL.jpg"), read_image(root / "aloeR.jpg"), disparity
        )
    image1, image2 = read_image(root / "graf1.png"), read_image(root / "graf3.png")
    flow, valid = homography_flow(read_opencv_matrix(root / "H1to3p.xml"), *image1.shape[:2])
    return FlowPair(name, _tensor(image1), _tensor(image2), flow, valid)


def resize_images(image: Tensor, size: tuple[int, int]) -> Tensor:
    """Resizes ``(B, 3, H, W)`` images to ``size`` with antialiasing (area-like)."""
    return F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=True)


def resize_flow(flow: Tensor, size: tuple[int, int]) -> Tensor:
    """Resizes a ``(B, 2, h, w)`` flow to ``size`` and rescales its vectors to the new pixels."""
    h, w = flow.shape[-2:]
    out = F.interpolate(flow, size=size, mode="bilinear", align_corners=False)
    scale = torch.tensor([size[1] / w, size[0] / h], dtype=flow.dtype, device=flow.device)
    return out * scale.view(1, 2, 1, 1)


def _errors(pred: Tensor, target: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    epe = torch.linalg.vector_norm(pred - target, dim=-3)
    return epe, valid.to(torch.bool).expand_as(epe)


def end_point_error(pred: Tensor, target: Tensor, valid: Tensor) -> Tensor:
    """Mean end-point error over the valid pixels.

    Args:
        pred (Tensor): ``(..., 2, H, W)`` predicted flow.
        target (Tensor): ``(..., 2, H, W)`` ground truth.
        valid (Tensor): ``(..., H, W)`` mask of pixels with ground truth.

    Example:
        >>> t = torch.zeros(2, 1, 2)
        >>> float(end_point_error(t + torch.tensor([3.0, 4.0]).view(2, 1, 1), t, torch.ones(1, 2)))
        5.0
    """
    epe, valid = _errors(pred, target, valid)
    return epe[valid].mean()


def f1_all(pred: Tensor, target: Tensor, valid: Tensor) -> Tensor:
    """KITTI's F1-all: the percentage of valid pixels with error > 3 px and > 5% of |target|.

    Example:
        >>> t = torch.zeros(2, 1, 2)
        >>> p = t.clone(); p[0, 0, 0] = 4.0
        >>> float(f1_all(p, t, torch.ones(1, 2)))
        50.0
    """
    epe, valid = _errors(pred, target, valid)
    mag = torch.linalg.vector_norm(target, dim=-3)
    outlier = (epe > 3.0) & (epe > 0.05 * mag)
    return 100.0 * outlier[valid].float().mean()
