"""DEQ-Flow's data: synthetic pairs, real pairs, file formats, benchmark loaders and metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from projects.deq_flow.data import (
    FlowFiles,
    SyntheticFlowDataModule,
    SyntheticPairs,
    benchmark_files,
    working_size,
)
from projects.deq_flow.formats import (
    read_flo,
    read_kitti_flow,
    read_pfm,
    write_flo,
    write_kitti_flow,
    write_pfm,
)
from projects.deq_flow.net import bilinear_sample, coords_grid
from projects.deq_flow.pairs import end_point_error, f1_all, load_real_pair, resize_flow
from projects.deq_flow.render import flow_to_colour
from projects.deq_flow.synthetic import LayeredFlow, flip_pair, load_photos

OPENCV = Path("/work/data/opencv_samples")
try:
    from deqzoo.data.sources import require

    OPENCV = require("opencv_samples")
    HAVE_OPENCV = True
except Exception:  # noqa: BLE001 - any failure means the samples are not here
    HAVE_OPENCV = False
needs_opencv = pytest.mark.skipif(not HAVE_OPENCV, reason="opencv_samples not fetched")


def _warp(image2: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """image2 sampled at x + flow(x): equals image1 where the flow is right and visible."""
    h, w = flow.shape[-2:]
    coords = coords_grid(1, h, w, dtype=flow.dtype) + flow[None]
    return bilinear_sample(image2[None], coords.permute(0, 2, 3, 1))[0]


@pytest.fixture(scope="module")
def photos():
    return load_photos(("astronaut", "coffee", "brick", "camera"), max_side=256)


@pytest.mark.parametrize("stereo_prob", [0.0, 1.0], ids=["layers", "stereo"])
def test_synthetic_ground_truth_warps_image2_onto_image1(photos, stereo_prob):
    gen = LayeredFlow(photos, 64, 80, stereo_prob=stereo_prob, max_shift=0.15)
    errors, baseline, occluded = [], [], []
    for seed in range(6):
        pair = gen(torch.Generator().manual_seed(seed))
        visible = pair["valid"] & ~pair["occluded"]
        error = (_warp(pair["image2"], pair["flow"]) - pair["image1"]).abs().mean(0)
        errors.append(error[visible].mean())
        baseline.append((pair["image2"] - pair["image1"]).abs().mean(0)[visible].mean())
        occluded.append(pair["occluded"].float().mean())
        if stereo_prob == 1.0:
            assert pair["flow"][1].abs().max() < 1e-4 and (pair["flow"][0] <= 0).all()
    assert torch.stack(errors).mean() < 0.02 < torch.stack(baseline).mean()
    assert torch.stack(occluded).mean() > 0.01  # the foreground layers do occlude


def test_flips_keep_the_ground_truth_consistent(photos):
    pair = LayeredFlow(photos, 48, 64)(torch.Generator().manual_seed(3))
    flipped = flip_pair(pair, horizontal=True, vertical=True)
    visible = flipped["valid"] & ~flipped["occluded"]
    error = (_warp(flipped["image2"], flipped["flow"]) - flipped["image1"]).abs().mean(0)
    assert error[visible].mean() < 0.02


def test_held_out_split_is_fixed_and_training_draws_are_fresh(photos):
    gen = LayeredFlow(photos, 32, 40)
    held_out = SyntheticPairs(gen, 3, seed=7)
    assert torch.equal(held_out[1]["image1"], held_out[1]["image1"])
    assert not torch.equal(held_out[0]["image1"], held_out[1]["image1"])
    train = SyntheticPairs(gen, 3, augment=True)
    assert not torch.equal(train[0]["image1"], train[0]["image1"])


def test_motorcycle_flow_is_minus_the_disparity():
    import skimage.data

    pair = load_real_pair("motorcycle")
    _, _, disparity = skimage.data.stereo_motorcycle()
    finite = np.isfinite(disparity)
    assert torch.equal(pair.valid, torch.from_numpy(finite))
    assert np.allclose(pair.flow[0].numpy()[finite], -disparity[finite])
    assert pair.flow[1].abs().max() == 0


def _photometric_error(pair, scale):
    flow = pair.flow * scale
    return (_warp(pair.image2, flow) - pair.image1).abs().mean(0)[pair.valid].mean()


@needs_opencv
def test_aloe_ground_truth_is_in_full_resolution_pixels():
    pair = load_real_pair("aloe", OPENCV)
    errors = {s: float(_photometric_error(pair, s)) for s in (0.5, 0.9, 1.0, 1.1, 2.0)}
    assert min(errors, key=errors.get) == 1.0, errors


@needs_opencv
def test_graffiti_homography_maps_image1_onto_image3():
    pair = load_real_pair("graffiti", OPENCV)
    assert pair.valid.float().mean() > 0.5
    assert _photometric_error(pair, 1.0) < 0.5 * _photometric_error(pair, 0.0)


def test_flo_and_pfm_round_trip(tmp_path):
    flow = np.random.default_rng(0).normal(size=(5, 7, 2)).astype(np.float32)
    write_flo(tmp_path / "a.flo", flow)
    assert np.array_equal(read_flo(tmp_path / "a.flo"), flow)
    colour = np.random.default_rng(1).normal(size=(5, 7, 3)).astype(np.float32)
    write_pfm(tmp_path / "a.pfm", colour)
    assert np.array_equal(read_pfm(tmp_path / "a.pfm"), colour)
    (tmp_path / "bad.flo").write_bytes(b"\0" * 16)
    with pytest.raises(ValueError, match="not a .flo"):
        read_flo(tmp_path / "bad.flo")


def test_kitti_png_round_trip_keeps_flow_to_1_64_px_and_validity(tmp_path):
    rng = np.random.default_rng(0)
    flow = rng.uniform(-100, 100, size=(4, 6, 2)).astype(np.float32)
    valid = rng.random((4, 6)) > 0.3
    write_kitti_flow(tmp_path / "f.png", flow, valid)
    flow2, valid2 = read_kitti_flow(tmp_path / "f.png")
    assert np.array_equal(valid2, valid)
    assert np.abs(flow2 - flow).max() <= 1 / 128 + 1e-6


@pytest.mark.parametrize(
    "name,count",
    [("chairs", 1), ("things", 2), ("sintel_clean", 1), ("sintel_final", 1), ("kitti", 1)],
)
def test_benchmark_loaders_read_their_formats(fake_benchmarks, name, count):
    files = benchmark_files(name, fake_benchmarks)
    assert len(files) == count
    item = FlowFiles(files)[0]
    assert item["image1"].shape == (3, 24, 32) and item["flow"].shape == (2, 24, 32)  # padded
    assert item["valid"][:20, :28].all() and not item["valid"][20:].any()
    crop = FlowFiles(files, crop=(16, 16), augment=True)[0]
    assert crop["image1"].shape == (3, 16, 16) and crop["flow"].shape == (2, 16, 16)


def test_missing_benchmark_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="FlyingChairs_release"):
        benchmark_files("chairs", tmp_path)
    with pytest.raises(ValueError, match="valid choices"):
        benchmark_files("middlebury", tmp_path)


def test_epe_and_f1_on_hand_made_flows():
    target = torch.zeros(2, 2, 2)
    target[0] = 10.0  # |target| = 10 everywhere
    pred = target.clone()
    pred[0, 0, 0] += 3.0  # error 3: not an outlier (needs > 3)
    pred[1, 0, 1] += 4.0  # error 4 > 3 and > 0.5: outlier
    pred[0, 1, 0] += 100.0  # error 100, but masked out
    valid = torch.tensor([[True, True], [False, True]])
    assert float(end_point_error(pred, target, valid)) == pytest.approx((3 + 4 + 0) / 3)
    assert float(f1_all(pred, target, valid)) == pytest.approx(100 / 3)
    # > 3 px but < 5% of a long flow: not an outlier.
    long = torch.full((2, 1, 1), 100.0)
    assert float(f1_all(long + 4.0, long, torch.ones(1, 1, dtype=torch.bool))) == 0.0


def test_resize_flow_rescales_vectors_to_full_resolution_pixels():
    flow = torch.tensor([2.0, 1.0]).view(1, 2, 1, 1).expand(1, 2, 8, 10)
    up = resize_flow(flow, (24, 20))
    assert torch.allclose(up[0, 0], torch.full((24, 20), 4.0))
    assert torch.allclose(up[0, 1], torch.full((24, 20), 3.0))
    assert working_size(500, 741, 320) == (216, 320)
    assert working_size(40, 43, None) == (40, 40)


def test_data_module_serves_real_and_held_out_test_items():
    dm = SyntheticFlowDataModule(
        height=32,
        width=40,
        batch_size=2,
        train_length=2,
        val_length=2,
        real_pairs=["motorcycle"],
        eval_long_side=64,
    )
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch["image1"].shape == (2, 3, 32, 40) and batch["valid"].dtype == torch.bool
    items = list(dm.test_dataloader())
    assert [int(b["index"]) for b in items] == [0, 1, 2]
    assert items[0]["image1"].shape[-1] == 64 and items[0]["flow"].shape[-1] == 741
    with pytest.raises(ValueError, match="valid choices"):
        SyntheticFlowDataModule(real_pairs=["sintel"])


def test_flow_colours_follow_the_middlebury_wheel():
    flow = np.zeros((2, 1, 3))
    flow[0, 0, 1] = 1.0  # +x: red in Baker et al.'s wheel
    flow[0, 0, 2] = -1.0  # -x: cyan-blue
    image = flow_to_colour(flow)
    assert tuple(image[0, 0]) == (255, 255, 255)  # zero flow is white
    assert image[0, 1, 0] == 255 and image[0, 1, 1] < 30 and image[0, 1, 2] < 60
    assert image[0, 2, 2] == 255 and image[0, 2, 0] < 30 and image[0, 2, 1] > 150


def test_real_pairs_take_one_long_side_per_pair():
    from projects.deq_flow.data import RealPairs

    pairs = RealPairs(["motorcycle"], {"motorcycle": 160})
    assert pairs[0]["image1"].shape == (3, 104, 160) and pairs[0]["flow"].shape == (2, 500, 741)
    with pytest.raises(ValueError, match="unknown pairs"):
        RealPairs(["motorcycle"], {"graffiti": 160})


def test_cpu_time_budget_stops_training_and_ends_the_schedule():
    from types import SimpleNamespace

    from projects.deq_flow.budget import CPUTimeBudget, CPUTimeLR

    stop = CPUTimeBudget(budget_s=1e-9)
    trainer = SimpleNamespace(should_stop=False)
    stop.on_train_start(trainer, None)
    sum(range(10000))
    stop.on_train_batch_end(trainer)
    assert trainer.should_stop
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = CPUTimeLR(opt, budget_s=3600.0)
    assert opt.param_groups[0]["lr"] < 0.01  # warming up
    sched.budget_s = 1e-9
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)  # the final factor
