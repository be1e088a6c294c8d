"""Tiny trees of the flow benchmarks in their own file formats, for the DEQ-Flow tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from projects.deq_flow.formats import write_flo, write_kitti_flow, write_pfm


def _write_rgb(path: Path, h=20, w=28, seed=0):
    import imageio.v3 as iio

    path.parent.mkdir(parents=True, exist_ok=True)
    image = (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)
    iio.imwrite(path, image, extension=".png" if path.suffix == ".ppm" else None)


def write_fake_benchmarks(root: Path, h=20, w=28) -> None:
    """Tiny FlyingChairs / FlyingThings3D / Sintel / KITTI trees in their own formats."""
    rng = np.random.default_rng(0)
    flow = rng.normal(size=(h, w, 2)).astype(np.float32)
    chairs = root / "FlyingChairs_release" / "data"
    for i in (1, 2):
        for k in (1, 2):
            _write_rgb(chairs / f"{i:05d}_img{k}.ppm", h, w, i + k)
        write_flo(chairs / f"{i:05d}_flow.flo", flow)
    np.savetxt(root / "FlyingChairs_release" / "FlyingChairs_train_val.txt", [1, 2], fmt="%d")
    seq = "TRAIN/A/0000"
    for cam, s in (("left", "L"), ("right", "R")):
        for f in (6, 7):
            for dstype in ("frames_cleanpass", "frames_finalpass"):
                _write_rgb(root / "FlyingThings3D" / dstype / seq / cam / f"{f:04d}.png", h, w)
        pfm = root / "FlyingThings3D" / "optical_flow" / seq / "into_future" / cam
        pfm.mkdir(parents=True, exist_ok=True)
        write_pfm(
            pfm / f"OpticalFlowIntoFuture_0006_{s}.pfm",
            np.concatenate([flow, np.zeros((h, w, 1), np.float32)], -1),
        )
    for dstype in ("clean", "final"):
        for f in (1, 2):
            _write_rgb(root / "Sintel" / "training" / dstype / "alley" / f"frame_{f:04d}.png", h, w)
    (root / "Sintel" / "training" / "flow" / "alley").mkdir(parents=True, exist_ok=True)
    write_flo(root / "Sintel" / "training" / "flow" / "alley" / "frame_0001.flo", flow)
    for k in (10, 11):
        _write_rgb(root / "KITTI" / "training" / "image_2" / f"000000_{k}.png", h, w)
    (root / "KITTI" / "training" / "flow_occ").mkdir(parents=True, exist_ok=True)
    write_kitti_flow(
        root / "KITTI" / "training" / "flow_occ" / "000000_10.png", flow * 10, np.ones((h, w), bool)
    )


@pytest.fixture
def fake_benchmarks(tmp_path) -> Path:
    """A folder holding tiny FlyingChairs, FlyingThings3D, Sintel and KITTI trees."""
    root = tmp_path / "flow"
    write_fake_benchmarks(root)
    return root
