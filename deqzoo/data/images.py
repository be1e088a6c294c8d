"""Image-classification data held in memory as tensors, and its LightningDataModule.

Small image sets (8x8 digits, 28x28 Fashion-MNIST, 32x32 CIFAR-10) fit in memory as one tensor,
so batches are slices: no decoding workers, and augmentation runs batched on the device.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from deqzoo.data.checks import check_sizes
from deqzoo.data.idx import read_idx
from deqzoo.data.sources import data_root, require
from torchdeq.utils.checks import Registry

__all__ = [
    "ImageSet",
    "IMAGE_SETS",
    "load_image_set",
    "random_crop_flip",
    "SplitsDataModule",
    "ImageDataModule",
]


@dataclass
class ImageSet:
    """Train and test images in [0, 1] as float32 (N, C, H, W) with int64 labels (N,)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int


def _tensors(x: np.ndarray, y: np.ndarray, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(np.ascontiguousarray(x)).float().div_(scale)
    return (x.unsqueeze(1) if x.ndim == 3 else x), torch.from_numpy(y.astype(np.int64))


def _digits(root: Path | None) -> ImageSet:
    from sklearn.datasets import load_digits

    digits = load_digits()
    # A fixed shuffle, then 80/20: the set ships without a test split.
    order = np.random.default_rng(0).permutation(len(digits.target))
    x, y = digits.images[order], digits.target[order]
    cut = int(0.8 * len(y))
    train, test = _tensors(x[:cut], y[:cut], 16.0), _tensors(x[cut:], y[cut:], 16.0)
    return ImageSet(*train, *test, num_classes=10)


def _fashion_mnist(root: Path | None) -> ImageSet:
    folder = require("fashion_mnist", root)
    read = {s: read_idx(folder / f"{s}-idx{3 if 'images' in s else 1}-ubyte.gz") for s in (
        "train-images", "train-labels", "t10k-images", "t10k-labels")}  # fmt: skip
    train = _tensors(read["train-images"], read["train-labels"], 255.0)
    test = _tensors(read["t10k-images"], read["t10k-labels"], 255.0)
    return ImageSet(*train, *test, num_classes=10)


def _cifar10(root: Path | None) -> ImageSet:
    folder = data_root(root) / "cifar10" / "cifar-10-batches-py"
    if not (folder / "test_batch").is_file():
        raise FileNotFoundError(
            f"CIFAR-10 is not in {folder}: no registry package ships it. Put the python version "
            f"of the data set there (data_batch_1..5, test_batch), or use name=fashion_mnist."
        )

    def load(names: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        batches = [pickle.loads((folder / n).read_bytes(), encoding="bytes") for n in names]
        x = np.concatenate([b[b"data"] for b in batches]).reshape(-1, 3, 32, 32)
        return _tensors(x, np.concatenate([b[b"labels"] for b in batches]), 255.0)

    train = load([f"data_batch_{i}" for i in range(1, 6)])
    return ImageSet(*train, *load(["test_batch"]), num_classes=10)


IMAGE_SETS = Registry("image data set")
IMAGE_SETS.register("digits", _digits)
IMAGE_SETS.register("fashion_mnist", _fashion_mnist)
IMAGE_SETS.register("cifar10", _cifar10)


def load_image_set(name: str, root: str | os.PathLike | None = None) -> ImageSet:
    """Loads an image set by name.

    Args:
        name (str): ``'digits'`` (scikit-learn, no download; 1797 8x8 images), ``'fashion_mnist'``
            (fetched: ``python -m deqzoo.data.fetch fashion_mnist``) or ``'cifar10'`` (the
            python version, supplied by the user under ``<root>/cifar10``), or any name
            registered in :data:`IMAGE_SETS`.
        root (str | PathLike, optional): The data cache root; see
            :func:`deqzoo.data.sources.data_root`.

    Returns:
        ImageSet: Train and test tensors.

    Raises:
        OptionError: If ``name`` is unknown (the message lists the choices).
        FileNotFoundError: If the files are missing (the message says how to get them).

    Example:
        >>> s = load_image_set("digits")
        >>> tuple(s.train_x.shape), s.num_classes
        ((1437, 1, 8, 8), 10)
    """
    loader: Callable[[Path | None], ImageSet] = IMAGE_SETS.lookup(name)
    return loader(Path(root) if root else None)


def random_crop_flip(x: torch.Tensor, padding: int = 4, generator=None) -> torch.Tensor:
    """Random translation by up to ``padding`` pixels (zero fill) and random horizontal flip.

    One crop offset and one flip per image, done for the whole batch at once with gathers.

    Args:
        x (torch.Tensor): Images (B, C, H, W).
        padding (int, optional): Largest shift in pixels. Default 4.
        generator (torch.Generator, optional): For reproducible draws. Default None.

    Returns:
        torch.Tensor: Augmented images (B, C, H, W).

    Example:
        >>> random_crop_flip(torch.ones(2, 3, 8, 8), padding=0).sum().item()
        384.0
    """
    B, C, H, W = x.shape
    kw = {"device": x.device, "generator": generator}
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    rows = torch.randint(0, 2 * padding + 1, (B, 1), **kw) + torch.arange(H, device=x.device)
    cols = torch.randint(0, 2 * padding + 1, (B, 1), **kw) + torch.arange(W, device=x.device)
    flip = torch.rand(B, 1, **kw) < 0.5
    cols = torch.where(flip, cols.flip(-1), cols)
    batch = torch.arange(B, device=x.device)[:, None, None]
    # (B, H, W, C) from advanced indexing over batch, rows and columns.
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


class SplitsDataModule(L.LightningDataModule):
    """A data module whose splits are in-memory ``TensorDataset`` s in ``self.data``.

    Subclasses fill ``self.data`` (``'train'``, ``'val'``, ``'test'``) in ``setup`` and keep
    ``batch_size``, ``eval_batch_size`` (None: ``batch_size``) and optionally ``num_workers`` in
    their hyperparameters; the loaders shuffle the training split only.
    """

    data: dict[str, TensorDataset]

    @property
    def image_shape(self) -> tuple[int, ...]:
        """(C, H, W) of the images (after :meth:`setup`)."""
        return tuple(self.data["train"].tensors[0].shape[1:])

    def _loader(self, split: str) -> DataLoader:
        hp = self.hparams
        train = split == "train"
        workers = hp.get("num_workers", 0)
        return DataLoader(
            self.data[split],
            batch_size=hp.batch_size if train else (hp.eval_batch_size or hp.batch_size),
            shuffle=train,
            drop_last=False,
            num_workers=workers,
            persistent_workers=workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")


class ImageDataModule(SplitsDataModule):
    """An in-memory image-classification data module with a train/val split.

    Images are normalised per channel with the training split's mean and std. Batches are
    ``(images (B, C, H, W), labels (B,))``; training batches are augmented on the device when
    ``augment`` is set.

    Args:
        name (str): The image set, see :func:`load_image_set`. Default ``'digits'``.
        root (str | PathLike, optional): The data cache root (``${paths.data_dir}``).
        val_size (float | int, optional): Share (< 1) or number of training images held out
            for validation. Default 0.1.
        batch_size (int, optional): Training batch size. Default 128.
        eval_batch_size (int, optional): Validation and test batch size (None: batch_size).
        num_workers (int, optional): Data-loader workers (slicing tensors needs none). Default 0.
        augment (bool, optional): Random crop and flip of training batches. Default False.
        train_limit (int, optional): Keep only this many training images (quick runs).
        test_limit (int, optional): Keep only this many test images.
        classes (Sequence[int], optional): Keep only these classes (relabelled 0..k-1).
        seed (int, optional): Seed of the split and subsets. Default 0.
        in_channels (int, optional): Expected image channels; checked at setup
            (:func:`deqzoo.data.checks.check_sizes`; the net's config reads it). Default None.
        num_classes (int, optional): Expected classes (after ``classes``); checked at setup.
            Default None.

    Example:
        >>> dm = ImageDataModule("digits", batch_size=32, train_limit=100)
        >>> dm.setup("fit")
        >>> x, y = next(iter(dm.train_dataloader()))
        >>> tuple(x.shape), dm.num_classes
        ((32, 1, 8, 8), 10)
    """

    def __init__(
        self,
        name: str = "digits",
        root: str | os.PathLike | None = None,
        val_size: float | int = 0.1,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        augment: bool = False,
        train_limit: int | None = None,
        test_limit: int | None = None,
        classes: Sequence[int] | None = None,
        seed: int = 0,
        in_channels: int | None = None,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        IMAGE_SETS.lookup(name)  # a misspelt name fails at construction, listing the choices
        self.save_hyperparameters(logger=False)
        self.data: dict[str, TensorDataset] = {}
        # The measured number of classes (after setup); the configured one is in hparams.
        self.num_classes: int | None = None
        self.mean: torch.Tensor | None = None
        self.std: torch.Tensor | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.data:
            return
        hp = self.hparams
        images = load_image_set(hp.name, hp.root)
        gen = torch.Generator().manual_seed(hp.seed)
        train_x, train_y, test_x, test_y = (
            images.train_x,
            images.train_y,
            images.test_x,
            images.test_y,
        )
        self.num_classes = images.num_classes
        if hp.classes is not None:
            keep = torch.as_tensor(list(hp.classes))
            relabel = torch.full((images.num_classes,), -1, dtype=torch.long)
            relabel[keep] = torch.arange(len(keep))
            train_mask, test_mask = torch.isin(train_y, keep), torch.isin(test_y, keep)
            train_x, train_y = train_x[train_mask], relabel[train_y[train_mask]]
            test_x, test_y = test_x[test_mask], relabel[test_y[test_mask]]
            self.num_classes = len(keep)
        check_sizes(
            f"ImageDataModule({hp.name!r})",
            {"in_channels": hp.in_channels, "num_classes": hp.num_classes},
            {"in_channels": int(train_x.shape[1]), "num_classes": self.num_classes},
        )
        order = torch.randperm(len(train_y), generator=gen)
        n_val = int(round(hp.val_size * len(order))) if hp.val_size < 1 else int(hp.val_size)
        if not 0 < n_val < len(order):
            raise ValueError(f"val_size={hp.val_size} leaves no train or no val images")
        val_idx, train_idx = order[:n_val], order[n_val:][: hp.train_limit]
        test_x, test_y = test_x[: hp.test_limit], test_y[: hp.test_limit]
        self.mean = train_x[train_idx].mean(dim=(0, 2, 3), keepdim=True)[0]
        self.std = train_x[train_idx].std(dim=(0, 2, 3), keepdim=True)[0].clamp_min(1e-6)

        def norm(x: torch.Tensor) -> torch.Tensor:
            return (x - self.mean) / self.std

        self.data = {
            "train": TensorDataset(norm(train_x[train_idx]), train_y[train_idx]),
            "val": TensorDataset(norm(train_x[val_idx]), train_y[val_idx]),
            "test": TensorDataset(norm(test_x), test_y),
        }

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if self.hparams.augment and self.trainer is not None and self.trainer.training:
            x, y = batch
            batch = (random_crop_flip(x), y)
        return batch
