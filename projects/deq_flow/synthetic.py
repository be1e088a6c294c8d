"""FlyingChairs-style training pairs from real photographs, with exact flow and occlusions.

A pair is a stack of layers: a background and 1-3 occluding foreground layers, each textured by a
real photograph (a random crop, scale and rotation of it) and cut out by a random blob with sharp
edges (foreground only). Each layer moves by its own projective map ``M_k`` (frame-1 pixels to
frame-2 pixels; a homography for the background, an affine map for the foreground), so both frames
are rendered exactly: frame 1 samples layer ``k`` at ``x``, frame 2 at ``M_k^-1 y``, and the
topmost covering layer wins. The ground truth is exact: ``flow(x) = M_top(x) x - x``. A pixel is
occluded in frame 2 when a higher layer covers ``M_top(x) x`` there (evaluated on the continuous
layer functions, not on a rendered image), and out of view when that point leaves the frame.

With probability ``stereo_prob`` the pair is a rectified stereo pair instead: every layer only
translates (and shears) horizontally, by a negative disparity that grows for nearer layers, as in
Middlebury's stereo sets.

Photographs: the real photos that ship with scikit-image (:data:`PHOTOS`); the OpenCV samples are
the evaluation pairs and the test video, so they are never used for training.

References:
    Dosovitskiy et al. FlowNet: Learning Optical Flow with Convolutional Networks (FlyingChairs).
    ICCV 2015, arXiv:1504.06852.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["PHOTOS", "LayeredFlow", "load_photos", "photometric_augment", "flip_pair"]

# Real photographs in scikit-image (camera and texture photos; no drawings or renders). The
# Motorcycle stereo pair is an evaluation pair and is excluded.
PHOTOS = (
    "astronaut",
    "brick",
    "camera",
    "chelsea",
    "clock",
    "coffee",
    "coins",
    "grass",
    "gravel",
    "hubble_deep_field",
    "immunohistochemistry",
    "moon",
    "retina",
    "rocket",
    "page",
    "cell",
)


def load_photos(names=PHOTOS, max_side: int = 512) -> list[Tensor]:
    """The photographs as ``(3, H, W)`` float tensors in [0, 1], at most ``max_side`` pixels."""
    import skimage.data

    photos = []
    for name in names:
        if name not in PHOTOS:
            raise ValueError(f"unknown photo {name!r}; valid choices: {list(PHOTOS)}")
        image = np.asarray(getattr(skimage.data, name)(), np.float32) / 255.0
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        x = torch.from_numpy(np.ascontiguousarray(image[..., :3])).permute(2, 0, 1)
        scale = max_side / max(x.shape[1:])
        if scale < 1:
            x = F.interpolate(x[None], scale_factor=scale, mode="area")[0]
        photos.append(x.contiguous())
    return photos


def _uniform(gen: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=gen))


def _sample(image: Tensor, grid: Tensor, padding: str = "reflection") -> Tensor:
    """``image`` (C, h, w) at normalised positions ``grid`` (H, W, 2) -> (C, H, W)."""
    return F.grid_sample(
        image[None], grid[None], mode="bilinear", padding_mode=padding, align_corners=True
    )[0]


def _apply(matrix: Tensor, points: Tensor) -> Tensor:
    """Projective map of ``points`` (..., 2) by a 3x3 ``matrix``."""
    p = points @ matrix[:2, :2].T + matrix[:2, 2]
    w = points @ matrix[2, :2] + matrix[2, 2]
    return p / w[..., None]


def _similarity(
    angle: float,
    scale_x: float,
    scale_y: float,
    shear: float,
    tx: float,
    ty: float,
    centre: tuple[float, float],
) -> Tensor:
    """An affine map about ``centre``: rotate, scale, shear, then translate (3x3, float64)."""
    c, s = math.cos(angle), math.sin(angle)
    a = torch.tensor([[c, -s], [s, c]], dtype=torch.float64) @ torch.tensor(
        [[scale_x, shear], [0.0, scale_y]], dtype=torch.float64
    )
    cx, cy = centre
    m = torch.eye(3, dtype=torch.float64)
    m[:2, :2] = a
    m[:2, 2] = torch.tensor([cx + tx, cy + ty], dtype=torch.float64) - a @ torch.tensor(
        [cx, cy], dtype=torch.float64
    )
    return m


@dataclass
class _Layer:
    texture: Tensor  # (3, h, w) photo
    to_texture: Tensor  # 3x3: frame pixels -> texture pixels
    motion: Tensor  # 3x3: frame-1 pixels -> frame-2 pixels
    blob: Tensor | None  # (1, 64, 64) shape (None: background covers everything)
    to_blob: Tensor | None  # 3x3: frame pixels -> blob pixels


class LayeredFlow:
    """Generates layered pairs ``(image1, image2, flow, valid, occluded)`` from photographs.

    Args:
        photos (list[Tensor]): ``(3, H, W)`` textures (:func:`load_photos`).
        height (int): Output height.
        width (int): Output width.
        max_layers (int, optional): Most foreground layers (at least 1). Default 3.
        max_shift (float, optional): Largest background translation, as a fraction of the width.
            Default 0.12.
        max_fg_shift (float, optional): Largest extra translation of a foreground layer (fraction
            of the width). Default 0.12.
        max_rotation (float, optional): Largest rotation in degrees. Default 10.
        max_zoom (float, optional): Largest relative scale change. Default 0.12.
        perspective (float, optional): Size of the background's projective terms (relative to
            the image size). Default 0.1.
        stereo_prob (float, optional): Probability of a stereo-like pair. Default 0.3.

    Example:
        >>> gen = LayeredFlow([torch.rand(3, 64, 64)], 32, 40)
        >>> pair = gen(torch.Generator().manual_seed(0))
        >>> pair['flow'].shape, pair['valid'].dtype
        (torch.Size([2, 32, 40]), torch.bool)
    """

    def __init__(
        self,
        photos: list[Tensor],
        height: int,
        width: int,
        max_layers: int = 3,
        max_shift: float = 0.12,
        max_fg_shift: float = 0.12,
        max_rotation: float = 10.0,
        max_zoom: float = 0.12,
        perspective: float = 0.1,
        stereo_prob: float = 0.3,
    ) -> None:
        if not photos:
            raise ValueError("LayeredFlow needs at least one photo")
        if max_layers < 1:
            raise ValueError(f"max_layers must be >= 1, got {max_layers}")
        if not 0.0 <= stereo_prob <= 1.0:
            raise ValueError(f"stereo_prob must be in [0, 1], got {stereo_prob}")
        self.photos = photos
        self.height, self.width = height, width
        self.max_layers = max_layers
        self.max_shift, self.max_fg_shift = max_shift, max_fg_shift
        self.max_rotation = math.radians(max_rotation)
        self.max_zoom = max_zoom
        self.perspective = perspective
        self.stereo_prob = stereo_prob
        ys, xs = torch.meshgrid(
            torch.arange(height, dtype=torch.float64),
            torch.arange(width, dtype=torch.float64),
            indexing="ij",
        )
        self.grid = torch.stack([xs, ys], -1)  # (H, W, 2) pixel (x, y)

    # -- random pieces ---------------------------------------------------------------------------

    def _texture_map(self, gen: torch.Generator, texture: Tensor) -> Tensor:
        """Frame pixels -> texture pixels: a random crop, zoom (0.6-1.6) and rotation."""
        th, tw = texture.shape[1:]
        zoom = math.exp(_uniform(gen, math.log(0.6), math.log(1.6)))
        angle = _uniform(gen, -math.pi / 6, math.pi / 6)
        cx, cy = _uniform(gen, 0.3, 0.7) * (tw - 1), _uniform(gen, 0.3, 0.7) * (th - 1)
        m = _similarity(angle, zoom, zoom, 0.0, 0.0, 0.0, (0.0, 0.0))
        m[:2, 2] = torch.tensor([cx, cy], dtype=torch.float64) - m[:2, :2] @ torch.tensor(
            [self.width / 2, self.height / 2], dtype=torch.float64
        )
        return m

    def _blob(self, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        """A random compact shape with a wiggly, sharp outline, and its frame -> blob map."""
        noise = torch.randn(1, 1, 6, 6, generator=gen, dtype=torch.float32)
        noise = F.interpolate(noise, size=(64, 64), mode="bicubic", align_corners=True)[0]
        lin = torch.linspace(-1, 1, 64)
        yy, xx = torch.meshgrid(lin, lin, indexing="ij")
        power = _uniform(gen, 1.5, 6.0)  # from diamond-ish to nearly square outlines
        radius = (xx.abs() ** power + yy.abs() ** power) ** (1 / power)
        blob = 1.0 - radius + 0.25 * noise  # > 0.5 inside
        size = min(self.height, self.width)
        rx, ry = _uniform(gen, 0.15, 0.45) * size, _uniform(gen, 0.15, 0.45) * size
        cx, cy = _uniform(gen, 0.1, 0.9) * self.width, _uniform(gen, 0.1, 0.9) * self.height
        angle = _uniform(gen, -math.pi, math.pi)
        # frame -> blob pixels (0..63): undo translation, rotation, radii.
        c, s = math.cos(angle), math.sin(angle)
        m = torch.eye(3, dtype=torch.float64)
        rot = torch.tensor([[c, s], [-s, c]], dtype=torch.float64)
        scale = torch.diag(torch.tensor([31.5 / rx, 31.5 / ry], dtype=torch.float64))
        m[:2, :2] = scale @ rot
        m[:2, 2] = torch.tensor([31.5, 31.5], dtype=torch.float64) - m[:2, :2] @ torch.tensor(
            [cx, cy], dtype=torch.float64
        )
        return blob, m

    def _stereo_motion(self, gen: torch.Generator, disparity: float) -> Tensor:
        """A horizontal shift by ``-disparity`` pixels, sheared and scaled (a slanted plane).

        The disparity stays at least 1 px over the whole frame, as for a rectified pair.
        """
        centre = (_uniform(gen, 0, self.width), _uniform(gen, 0, self.height))
        m = _similarity(0.0, 1.0 + _uniform(gen, -0.05, 0.05), 1.0, 0.0, -disparity, 0.0, centre)
        m[0, 1] = _uniform(gen, -0.05, 0.05)
        m[0, 2] -= m[0, 1] * centre[1]
        corners = torch.tensor(
            [
                [0.0, 0.0],
                [self.width - 1.0, 0.0],
                [0.0, self.height - 1.0],
                [self.width - 1.0, self.height - 1.0],
            ],
            dtype=torch.float64,
        )
        largest_flow = float((_apply(m, corners) - corners)[:, 0].max())
        m[0, 2] -= max(largest_flow + 1.0, 0.0)
        return m

    def _motion(self, gen: torch.Generator, base: Tensor | None) -> Tensor:
        """A layer's frame-1 -> frame-2 map: a homography (background) or affine (foreground)."""
        w, h = self.width, self.height
        centre = (_uniform(gen, 0, w), _uniform(gen, 0, h))
        shift = self.max_shift if base is None else self.max_fg_shift
        m = _similarity(
            _uniform(gen, -self.max_rotation, self.max_rotation),
            1.0 + _uniform(gen, -self.max_zoom, self.max_zoom),
            1.0 + _uniform(gen, -self.max_zoom, self.max_zoom),
            _uniform(gen, -0.1, 0.1),
            _uniform(gen, -shift, shift) * w,
            _uniform(gen, -shift, shift) * h,
            centre,
        )
        if base is not None:
            return base @ m  # the foreground moves relative to the background
        m[2, 0] = _uniform(gen, -self.perspective, self.perspective) / w
        m[2, 1] = _uniform(gen, -self.perspective, self.perspective) / h
        # Keep the homography's scale near 1 over the frame (w = 1 at the frame centre).
        m[2, 2] = 1.0 - m[2, 0] * w / 2 - m[2, 1] * h / 2
        return m

    def _layers(self, gen: torch.Generator) -> list[_Layer]:
        stereo = _uniform(gen, 0, 1) < self.stereo_prob
        n_fg = int(torch.randint(1, self.max_layers + 1, (), generator=gen))
        layers = []
        base = None
        disparity = _uniform(gen, 0.0, self.max_shift) * self.width
        for depth in range(n_fg + 1):
            texture = self.photos[int(torch.randint(len(self.photos), (), generator=gen))]
            if stereo:
                # Nearer layers (drawn later) have larger disparities.
                disparity += depth and _uniform(gen, 0.1, 1.0) * self.max_fg_shift * self.width
                motion = self._stereo_motion(gen, disparity)
            else:
                motion = self._motion(gen, base)
            blob, to_blob = self._blob(gen) if depth else (None, None)
            layers.append(_Layer(texture, self._texture_map(gen, texture), motion, blob, to_blob))
            base = motion if base is None else base
        return layers

    # -- rendering -------------------------------------------------------------------------------

    @staticmethod
    def _normalise(points: Tensor, h: int, w: int) -> Tensor:
        scale = torch.tensor([2.0 / (w - 1), 2.0 / (h - 1)], dtype=points.dtype)
        return (points * scale - 1).float()

    def _covers(self, layer: _Layer, points: Tensor) -> Tensor:
        """Whether ``layer`` covers the layer-space (frame-1) ``points`` (H, W, 2)."""
        if layer.blob is None:
            return torch.ones(points.shape[:2], dtype=torch.bool)
        grid = self._normalise(_apply(layer.to_blob, points), 64, 64)
        return _sample(layer.blob, grid, padding="zeros")[0] > 0.5

    def _colour(self, layer: _Layer, points: Tensor) -> Tensor:
        th, tw = layer.texture.shape[1:]
        return _sample(layer.texture, self._normalise(_apply(layer.to_texture, points), th, tw))

    def render(self, layers: list[_Layer]) -> dict[str, Tensor]:
        """Renders both frames, the flow and the masks of a layer stack."""
        grid = self.grid
        image1 = torch.zeros(3, self.height, self.width)
        image2 = torch.zeros_like(image1)
        top = torch.zeros(self.height, self.width, dtype=torch.long)
        for k, layer in enumerate(layers):
            covers = self._covers(layer, grid)
            image1 = torch.where(covers, self._colour(layer, grid), image1)
            top[covers] = k
            source = _apply(torch.linalg.inv(layer.motion), grid)
            image2 = torch.where(self._covers(layer, source), self._colour(layer, source), image2)
        target = torch.zeros_like(grid)
        for k, layer in enumerate(layers):
            mask = top == k
            target[mask] = _apply(layer.motion, grid[mask])
        occluded = torch.zeros_like(top, dtype=torch.bool)
        for j, layer in enumerate(layers[1:], start=1):
            # The point seen in frame 2 at `target` belongs to layer j if j covers it there.
            back = _apply(torch.linalg.inv(layer.motion), target)
            occluded |= (top < j) & self._covers(layer, back)
        inside = (
            (target[..., 0] >= 0)
            & (target[..., 0] <= self.width - 1)
            & (target[..., 1] >= 0)
            & (target[..., 1] <= self.height - 1)
        )
        flow = (target - grid).permute(2, 0, 1).float()
        return {
            "image1": image1.clamp(0, 1),
            "image2": image2.clamp(0, 1),
            "flow": flow,
            "valid": inside,
            "occluded": occluded,
        }

    def __call__(self, gen: torch.Generator) -> dict[str, Tensor]:
        return self.render(self._layers(gen))


def photometric_augment(
    pair: dict[str, Tensor], gen: torch.Generator, asymmetric_prob: float = 0.2
) -> dict[str, Tensor]:
    """Colour jitter (brightness, contrast, saturation, gamma) and noise, as in RAFT.

    The same jitter applies to both frames, except with probability ``asymmetric_prob``,
    when each frame draws its own.
    """

    def jitter_params():
        return (
            _uniform(gen, 0.7, 1.3),
            _uniform(gen, 0.7, 1.3),
            _uniform(gen, 0.6, 1.4),
            math.exp(_uniform(gen, -0.3, 0.3)),
            torch.rand(3, 1, 1, generator=gen) * 0.2 + 0.9,
        )

    def jitter(image: Tensor, params) -> Tensor:
        brightness, contrast, saturation, gamma, tint = params
        grey = image.mean(0, keepdim=True)
        image = grey + saturation * (image - grey)
        image = (image - image.mean()) * contrast + image.mean()
        image = (image * brightness * tint).clamp(0, 1) ** gamma
        return image

    p1 = jitter_params()
    p2 = jitter_params() if _uniform(gen, 0, 1) < asymmetric_prob else p1
    sigma = _uniform(gen, 0.0, 0.02)
    out = dict(pair)
    for key, params in (("image1", p1), ("image2", p2)):
        image = jitter(pair[key], params)
        noise = torch.randn(image.shape, generator=gen) * sigma
        out[key] = (image + noise).clamp(0, 1)
    return out


def flip_pair(pair: dict[str, Tensor], horizontal: bool, vertical: bool) -> dict[str, Tensor]:
    """Mirrors a pair and its flow (negating the flipped flow component)."""
    out = dict(pair)
    for flag, axis, comp in ((horizontal, -1, 0), (vertical, -2, 1)):
        if not flag:
            continue
        for key, value in out.items():
            out[key] = value.flip(axis)
        flow = out["flow"].clone()
        flow[comp] = -flow[comp]
        out["flow"] = flow
    return out
