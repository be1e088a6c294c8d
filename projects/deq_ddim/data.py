"""Images in ``[-1, 1]`` at a chosen resolution, for training and evaluating the noise model.

The images come from :mod:`deqzoo.data`'s shared sets: Fashion-MNIST (fetched once with
``python -m deqzoo.data.fetch fashion_mnist``) by default, scikit-learn's 8x8 digits (no
download) for tests. Resizing is area averaging (anti-aliased), done once at set-up.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import TensorDataset

from deqzoo.data import check_sizes, load_image_set
from deqzoo.data.images import SplitsDataModule

__all__ = ["DiffusionDataModule", "to_unit_range"]


def to_unit_range(x: Tensor, size: int | None) -> Tensor:
    """Images in ``[0, 1]`` (N, C, H, W) resized to ``size`` (area) and mapped to ``[-1, 1]``.

    Example:
        >>> to_unit_range(torch.ones(2, 1, 28, 28), 16).shape
        torch.Size([2, 1, 16, 16])
    """
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="area")
    return (x * 2 - 1).clamp(-1, 1)


class DiffusionDataModule(SplitsDataModule):
    """Unlabelled-use image batches ``(images (B, C, S, S) in [-1, 1], labels (B,))``.

    Args:
        name (str): An image set of :func:`deqzoo.data.load_image_set`. Default
            ``'fashion_mnist'``.
        root (str | PathLike, optional): The data cache root (``${paths.data_dir}``).
        size (int, optional): Side of the (square) images; None keeps the original.
        classes (Sequence[int], optional): Keep only these classes (labels kept as they are).
        val_size (int): Training images held out for validation. Default 2000.
        batch_size (int): Training batch size. Default 128.
        eval_batch_size (int, optional): Validation and test batch size. Default 500.
        train_limit (int, optional): Keep only this many training images.
        test_limit (int, optional): Keep only this many test images.
        seed (int): Seed of the split. Default 0.
        in_channels (int, optional): Expected image channels, checked at setup
            (:func:`deqzoo.data.check_sizes`; the net's config reads it). Default None.
        num_classes (int, optional): Expected classes of the set. Default None.

    Example:
        >>> dm = DiffusionDataModule("digits", size=8, val_size=100, batch_size=16)
        >>> dm.setup("fit")
        >>> x, y = next(iter(dm.train_dataloader()))
        >>> tuple(x.shape), bool(x.min() >= -1 and x.max() <= 1)
        ((16, 1, 8, 8), True)
    """

    def __init__(
        self,
        name: str = "fashion_mnist",
        root: str | os.PathLike | None = None,
        size: int | None = None,
        classes: Sequence[int] | None = None,
        val_size: int = 2000,
        batch_size: int = 128,
        eval_batch_size: int | None = 500,
        train_limit: int | None = None,
        test_limit: int | None = None,
        seed: int = 0,
        in_channels: int | None = None,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.data: dict[str, TensorDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.data:
            return
        hp = self.hparams
        images = load_image_set(hp.name, hp.root)
        check_sizes(
            type(self).__name__,
            {"in_channels": hp.in_channels, "num_classes": hp.num_classes},
            {"in_channels": images.train_x.shape[1], "num_classes": images.num_classes},
        )
        train_x, train_y = images.train_x, images.train_y
        test_x, test_y = images.test_x, images.test_y
        if hp.classes is not None:
            keep = torch.as_tensor(list(hp.classes))
            bad = [c for c in keep.tolist() if not 0 <= c < images.num_classes]
            if bad:
                raise ValueError(f"classes {bad} not in [0, {images.num_classes})")
            train_mask, test_mask = torch.isin(train_y, keep), torch.isin(test_y, keep)
            train_x, train_y = train_x[train_mask], train_y[train_mask]
            test_x, test_y = test_x[test_mask], test_y[test_mask]
        order = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(hp.seed))
        if not 0 < hp.val_size < len(order):
            raise ValueError(f"val_size={hp.val_size} must be in (0, {len(order)})")
        val_idx, train_idx = order[: hp.val_size], order[hp.val_size :][: hp.train_limit]
        self.num_classes = images.num_classes
        self.data = {
            "train": TensorDataset(to_unit_range(train_x[train_idx], hp.size), train_y[train_idx]),
            "val": TensorDataset(to_unit_range(train_x[val_idx], hp.size), train_y[val_idx]),
            "test": TensorDataset(
                to_unit_range(test_x[: hp.test_limit], hp.size), test_y[: hp.test_limit]
            ),
        }
