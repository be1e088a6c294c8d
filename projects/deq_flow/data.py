"""Data for DEQ-Flow: synthetic layered pairs for training, real pairs for evaluation.

:class:`SyntheticFlowDataModule` (the offline default) trains on layered pairs generated from real
photographs (:mod:`projects.deq_flow.synthetic`), validates on a fixed-seed held-out synthetic
split, and tests on the real pairs with measured ground truth (:mod:`projects.deq_flow.pairs`:
Motorcycle, Aloe, Graffiti) plus the held-out synthetic split. Real pairs are fed to the model
downscaled to ``eval_long_side`` pixels; the metrics are computed on the full-resolution ground
truth after upsampling and rescaling the flow (the module does it with the ``scale`` returned).

:class:`FlowBenchmarkDataModule` reads the paper's data sets for users who have them:
FlyingChairs, FlyingThings3D, MPI Sintel (clean/final) and KITTI-2015, with random crops, flips
and colour jitter for training.

The OpenCV samples come from Debian ``opencv-doc``: ``python -m deqzoo.data.fetch opencv_samples``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from deqzoo.module import plain_hparams

from .formats import read_flo, read_image, read_kitti_flow, read_pfm
from .pairs import REAL_PAIRS, load_real_pair, resize_images
from .synthetic import LayeredFlow, flip_pair, load_photos, photometric_augment

__all__ = [
    "BENCHMARKS",
    "FlowBenchmarkDataModule",
    "FlowFiles",
    "RealPairs",
    "SyntheticFlowDataModule",
    "SyntheticPairs",
    "benchmark_files",
    "working_size",
]

# Sources shared with other projects (opencv_samples) are declared in deqzoo.
SOURCES: list = []


def working_size(height: int, width: int, long_side: int | None) -> tuple[int, int]:
    """The size (multiples of 8) a pair is fed to the model at: long side ``long_side`` at most.

    Example:
        >>> working_size(500, 741, 320)
        (216, 320)
    """
    scale = 1.0 if long_side is None else min(1.0, long_side / max(height, width))
    return (max(8, round(height * scale / 8) * 8), max(8, round(width * scale / 8) * 8))


def _pair_item(
    image1: Tensor, image2: Tensor, flow: Tensor, valid: Tensor, index: int, long_side: int | None
) -> dict[str, Tensor]:
    size = working_size(*image1.shape[-2:], long_side)
    if size != tuple(image1.shape[-2:]):
        image1, image2 = (resize_images(x[None], size)[0] for x in (image1, image2))
    return {
        "image1": image1.contiguous(),
        "image2": image2.contiguous(),
        "flow": flow,
        "valid": valid,
        "index": torch.tensor(index),
    }


class SyntheticPairs(Dataset):
    """``length`` layered pairs; fixed per index when ``seed`` is set, fresh draws otherwise.

    Args:
        generator (LayeredFlow): The pair generator.
        length (int): Number of pairs (an epoch's length when drawing fresh pairs).
        seed (int, optional): Seed of a fixed split (pair ``i`` uses ``seed + i``). Default None.
        augment (bool, optional): Colour jitter and random flips. Default False.
        mask_occlusions (bool, optional): Leave occluded pixels out of ``valid`` (they still
            have exact flow, which RAFT-style training supervises). Default False.
        index_offset (int, optional): Added to the items' ``index``. Default 0.
    """

    def __init__(
        self,
        generator: LayeredFlow,
        length: int,
        seed: int | None = None,
        augment: bool = False,
        mask_occlusions: bool = False,
        index_offset: int = 0,
    ) -> None:
        self.generator = generator
        self.length = length
        self.seed = seed
        self.augment = augment
        self.mask_occlusions = mask_occlusions
        self.index_offset = index_offset

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        gen = torch.Generator()
        if self.seed is None:
            gen.manual_seed(int(torch.randint(2**62, ())))
        else:
            gen.manual_seed(self.seed + i)
        pair = self.generator(gen)
        if self.augment:
            pair = photometric_augment(pair, gen)
            flips = torch.rand(2, generator=gen) < torch.tensor([0.5, 0.1])
            pair = flip_pair(pair, bool(flips[0]), bool(flips[1]))
        valid = pair["valid"] & ~pair["occluded"] if self.mask_occlusions else pair["valid"]
        return _pair_item(
            pair["image1"], pair["image2"], pair["flow"], valid, self.index_offset + i, None
        )


class RealPairs(Dataset):
    """The real evaluation pairs, each resized to its long side (ground truth kept full size).

    Args:
        names (Sequence[str], optional): The pairs. Default all.
        long_side (int | Mapping[str, int] | None, optional): Working long side, one for all
            pairs or one per pair name (a pair left out, or None: full size). Default 320.
        opencv_root (str or Path, optional): Folder of the OpenCV samples.
    """

    def __init__(
        self,
        names: Sequence[str] = REAL_PAIRS,
        long_side: int | Mapping[str, int] | None = 320,
        opencv_root: str | Path | None = None,
    ) -> None:
        self.pairs = [load_real_pair(n, opencv_root) for n in names]
        self.names = list(names)
        if isinstance(long_side, Mapping):
            unknown = set(long_side) - set(self.names)
            if unknown:
                raise ValueError(
                    f"eval_long_side names unknown pairs {sorted(unknown)}; "
                    f"valid choices: {self.names}"
                )
            self.long_sides = [long_side.get(n) for n in self.names]
        else:
            self.long_sides = [long_side] * len(self.names)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        p = self.pairs[i]
        return _pair_item(p.image1, p.image2, p.flow, p.valid, i, self.long_sides[i])


class SyntheticFlowDataModule(L.LightningDataModule):
    """Layered synthetic pairs for training/validation; real pairs (+ held-out) for testing.

    Test items carry an ``index``: ``0 .. len(real_pairs)-1`` are the real pairs (in the order of
    ``real_pairs``), the rest the held-out synthetic pairs.

    Args:
        height (int, optional): Training crop height (multiple of 8). Default 128.
        width (int, optional): Training crop width. Default 160.
        batch_size (int, optional): Training batch size. Default 4.
        train_length (int, optional): Pairs per training epoch (fresh draws). Default 2000.
        val_length (int, optional): Held-out synthetic pairs. Default 32.
        val_seed (int, optional): Seed of the held-out split. Default 1000003.
        real_pairs (Sequence[str], optional): Evaluation pairs. Default all of
            :data:`~projects.deq_flow.pairs.REAL_PAIRS`.
        eval_long_side (int | Mapping[str, int], optional): Long side real pairs are fed at,
            for all or per pair (``{graffiti: 160}``; a pair left out runs at full size).
            Default 200.
        mask_occlusions (bool, optional): Train only on non-occluded pixels. Default False.
        max_layers (int, optional): Most foreground layers. Default 3.
        stereo_prob (float, optional): Share of stereo-like pairs. Default 0.3.
        max_shift (float, optional): Background motion (fraction of the width). Default 0.12.
        max_rotation (float, optional): Largest rotation of a layer, in degrees. Default 10.
        max_zoom (float, optional): Largest relative scale change of a layer. Default 0.12.
        perspective (float, optional): Size of the background's projective terms (relative
            to the image size). Default 0.1.
        num_workers (int, optional): Loader workers. Default 0.
        data_dir (str, optional): The data cache root (for the OpenCV samples).
    """

    def __init__(
        self,
        height: int = 128,
        width: int = 160,
        batch_size: int = 4,
        train_length: int = 2000,
        val_length: int = 32,
        val_seed: int = 1000003,
        real_pairs: Sequence[str] = REAL_PAIRS,
        eval_long_side: int | Mapping[str, int] | None = 200,
        mask_occlusions: bool = False,
        max_layers: int = 3,
        stereo_prob: float = 0.3,
        max_shift: float = 0.12,
        max_rotation: float = 10.0,
        max_zoom: float = 0.12,
        perspective: float = 0.1,
        num_workers: int = 0,
        data_dir: str | None = None,
    ) -> None:
        super().__init__()
        if height % 8 or width % 8:
            raise ValueError(f"height and width must be multiples of 8, got {height}x{width}")
        for name in real_pairs:
            if name not in REAL_PAIRS:
                raise ValueError(f"unknown real pair {name!r}; valid choices: {list(REAL_PAIRS)}")
        self.save_hyperparameters(logger=False)
        plain_hparams(self)
        self.real_pairs = list(real_pairs)
        self._sets: dict[str, Dataset] = {}

    def setup(self, stage: str | None = None) -> None:
        if self._sets:
            return
        hp = self.hparams
        gen = LayeredFlow(
            load_photos(),
            hp.height,
            hp.width,
            max_layers=hp.max_layers,
            stereo_prob=hp.stereo_prob,
            max_shift=hp.max_shift,
            max_fg_shift=hp.max_shift,
            max_rotation=hp.max_rotation,
            max_zoom=hp.max_zoom,
            perspective=hp.perspective,
        )
        self._sets["train"] = SyntheticPairs(
            gen, hp.train_length, augment=True, mask_occlusions=hp.mask_occlusions
        )
        held_out = SyntheticPairs(
            gen, hp.val_length, seed=hp.val_seed, index_offset=len(self.real_pairs)
        )
        self._sets["val"] = held_out
        root = None
        if self.real_pairs and self.real_pairs != ["motorcycle"]:
            from deqzoo.data.sources import require

            root = require("opencv_samples", hp.data_dir)
        real = RealPairs(self.real_pairs, hp.eval_long_side, root)
        self._sets["test"] = ConcatDataset([real, held_out])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self._sets["train"],
            batch_size=self.hparams.batch_size,
            num_workers=self.hparams.num_workers,
            drop_last=True,
            persistent_workers=self.hparams.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(
            self._sets["val"],
            batch_size=self.hparams.batch_size,
            num_workers=self.hparams.num_workers,
        )

    def test_dataloader(self) -> DataLoader:
        # Real pairs differ in size: one pair per batch.
        return DataLoader(self._sets["test"], batch_size=1, num_workers=self.hparams.num_workers)


# ------------------------------------------------------------------------------------------------
# the paper's data sets


def _flyingchairs(root: Path, split: str) -> list[tuple[Path, Path, Path]]:
    images = sorted((root / "data").glob("*_img1.ppm"))
    split_file = root / "FlyingChairs_train_val.txt"
    if split_file.is_file():
        labels = np.loadtxt(split_file, dtype=np.int32)
        keep = 1 if split == "training" else 2
        images = [p for p, lab in zip(images, labels) if lab == keep]
    return [
        (
            p,
            p.with_name(p.name.replace("img1", "img2")),
            p.with_name(p.name.replace("img1.ppm", "flow.flo")),
        )
        for p in images
    ]


def _flyingthings(root: Path, split: str, dstype: str = "frames_cleanpass"):
    out = []
    part = "TRAIN" if split == "training" else "TEST"
    for cam, suffix in (("left", "L"), ("right", "R")):
        for seq in sorted((root / dstype / part).glob(f"*/*/{cam}")):
            rel = seq.relative_to(root / dstype)
            flows = root / "optical_flow" / rel.parent / "into_future" / cam
            frames = sorted(seq.glob("*.png"))
            for a, b in zip(frames[:-1], frames[1:]):
                flo = flows / f"OpticalFlowIntoFuture_{a.stem}_{suffix}.pfm"
                if flo.is_file():
                    out.append((a, b, flo))
    return out


def _sintel(root: Path, split: str, dstype: str = "clean"):
    out = []
    for scene in sorted((root / split / dstype).iterdir()):
        frames = sorted(scene.glob("*.png"))
        for a, b in zip(frames[:-1], frames[1:]):
            out.append((a, b, root / split / "flow" / scene.name / f"{a.stem}.flo"))
    return out


def _kitti(root: Path, split: str):
    folder = root / split
    return [
        (p, p.with_name(p.name.replace("_10", "_11")), folder / "flow_occ" / p.name)
        for p in sorted((folder / "image_2").glob("*_10.png"))
    ]


BENCHMARKS = {
    "chairs": _flyingchairs,
    "things": _flyingthings,
    "things_final": lambda root, split: _flyingthings(root, split, "frames_finalpass"),
    "sintel_clean": lambda root, split: _sintel(root, split, "clean"),
    "sintel_final": lambda root, split: _sintel(root, split, "final"),
    "kitti": _kitti,
}
_FOLDERS = {
    "chairs": "FlyingChairs_release",
    "things": "FlyingThings3D",
    "things_final": "FlyingThings3D",
    "sintel_clean": "Sintel",
    "sintel_final": "Sintel",
    "kitti": "KITTI",
}


def benchmark_files(name: str, root: str | os.PathLike, split: str = "training"):
    """``(image1, image2, flow)`` paths of a benchmark under ``root/<folder>``.

    Folders: ``FlyingChairs_release`` (``data/*_img1.ppm``), ``FlyingThings3D``
    (``frames_cleanpass``, ``optical_flow``), ``Sintel`` (``training/{clean,final,flow}``),
    ``KITTI`` (``training/{image_2,flow_occ}``).
    """
    if name not in BENCHMARKS:
        raise ValueError(f"unknown flow benchmark {name!r}; valid choices: {sorted(BENCHMARKS)}")
    folder = Path(root) / _FOLDERS[name]
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{name}: no folder {folder}; download the data set from its authors' site "
            f"(it is not in a package registry) and unpack it there"
        )
    files = BENCHMARKS[name](folder, split)
    if not files:
        raise FileNotFoundError(f"{name}: no image pairs found under {folder} ({split})")
    return files


def _read_flow(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if path.suffix == ".flo":
        flow = read_flo(path)
        return flow, np.ones(flow.shape[:2], bool)
    if path.suffix == ".pfm":
        flow = read_pfm(path)[..., :2]
        return flow, np.ones(flow.shape[:2], bool)
    if path.suffix == ".png":
        return read_kitti_flow(path)
    raise ValueError(f"unknown flow file type {path.suffix!r}; valid: .flo, .pfm, .png")


class FlowFiles(Dataset):
    """Image pairs and flows from files, with random crops, flips and colour jitter in training.

    Args:
        files (Sequence[tuple]): ``(image1, image2, flow)`` paths.
        crop (Sequence[int], optional): Training crop ``(H, W)``; None keeps the full frame
            (padded to a multiple of 8 at evaluation). Default None.
        augment (bool, optional): Random crops, flips and colour jitter. Default False.
        index (int, optional): The items' ``index`` (which benchmark they come from). Default 0.
    """

    def __init__(
        self,
        files: Sequence[tuple],
        crop: Sequence[int] | None = None,
        augment: bool = False,
        index: int = 0,
    ) -> None:
        self.files = list(files)
        self.crop = None if crop is None else tuple(crop)
        self.augment = augment
        self.index = index

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        a, b, f = (Path(p) for p in self.files[i])
        image1, image2 = (torch.from_numpy(read_image(p)).permute(2, 0, 1) for p in (a, b))
        flow, valid = _read_flow(f)
        pair = {
            "image1": image1,
            "image2": image2,
            "flow": torch.from_numpy(np.ascontiguousarray(flow)).permute(2, 0, 1),
            "valid": torch.from_numpy(valid),
            "occluded": torch.zeros_like(torch.from_numpy(valid)),
        }
        gen = torch.Generator().manual_seed(int(torch.randint(2**62, ())))
        if self.augment:
            pair = photometric_augment(pair, gen)
            flips = torch.rand(2, generator=gen) < torch.tensor([0.5, 0.1])
            pair = flip_pair(pair, bool(flips[0]), bool(flips[1]))
        h, w = pair["flow"].shape[-2:]
        if self.crop is not None:
            ch, cw = min(self.crop[0], h // 8 * 8), min(self.crop[1], w // 8 * 8)
            y = int(torch.randint(h - ch + 1, (), generator=gen)) if self.augment else (h - ch) // 2
            x = int(torch.randint(w - cw + 1, (), generator=gen)) if self.augment else (w - cw) // 2
            pair = {k: v[..., y : y + ch, x : x + cw] for k, v in pair.items()}
        else:
            # Evaluate the full frame: crop to a multiple of 8 would lose pixels; pad instead.
            ph, pw = math.ceil(h / 8) * 8 - h, math.ceil(w / 8) * 8 - w
            pad = torch.nn.functional.pad
            pair["image1"] = pad(pair["image1"][None], (0, pw, 0, ph), mode="replicate")[0]
            pair["image2"] = pad(pair["image2"][None], (0, pw, 0, ph), mode="replicate")[0]
            pair["flow"] = pad(pair["flow"], (0, pw, 0, ph))
            pair["valid"] = pad(pair["valid"], (0, pw, 0, ph))
        return {
            "image1": pair["image1"].contiguous(),
            "image2": pair["image2"].contiguous(),
            "flow": pair["flow"].contiguous(),
            "valid": pair["valid"].contiguous(),
            "index": torch.tensor(self.index),
        }


class FlowBenchmarkDataModule(L.LightningDataModule):
    """The paper's data: train on some benchmarks, validate/test on others.

    Args:
        root (str): Folder holding the benchmark folders (see :func:`benchmark_files`).
        train (Sequence[str]): Benchmarks to train on (concatenated), e.g. ``['chairs']``.
        val (Sequence[str], optional): Benchmarks to evaluate on. Default ``['sintel_clean',
            'sintel_final', 'kitti']``.
        crop (Sequence[int], optional): Training crop ``(H, W)``. Default ``(368, 496)``.
        batch_size (int, optional): Training batch size. Default 12.
        num_workers (int, optional): Loader workers. Default 4.
    """

    def __init__(
        self,
        root: str,
        train: Sequence[str],
        val: Sequence[str] = ("sintel_clean", "sintel_final", "kitti"),
        crop: Sequence[int] = (368, 496),
        batch_size: int = 12,
        num_workers: int = 4,
    ) -> None:
        super().__init__()
        for name in [*train, *val]:
            if name not in BENCHMARKS:
                raise ValueError(f"unknown flow benchmark {name!r}; valid: {sorted(BENCHMARKS)}")
        self.save_hyperparameters(logger=False)
        plain_hparams(self)
        self.real_pairs = list(val)
        self._sets: dict[str, Dataset] = {}

    def setup(self, stage: str | None = None) -> None:
        if self._sets:
            return
        hp = self.hparams
        self._sets["train"] = ConcatDataset(
            [
                FlowFiles(benchmark_files(n, hp.root, "training"), hp.crop, augment=True)
                for n in hp.train
            ]
        )
        # Test items carry the index of their benchmark in `val` (the module names them).
        self._sets["val"] = ConcatDataset(
            [
                FlowFiles(benchmark_files(n, hp.root, "training"), index=k)
                for k, n in enumerate(hp.val)
            ]
        )

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self._sets["train"],
            batch_size=self.hparams.batch_size,
            shuffle=True,
            num_workers=self.hparams.num_workers,
            drop_last=True,
        )

    def val_dataloader(self) -> DataLoader:
        # Frames differ in size across benchmarks: one pair per batch.
        return DataLoader(self._sets["val"], batch_size=1, num_workers=self.hparams.num_workers)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()
