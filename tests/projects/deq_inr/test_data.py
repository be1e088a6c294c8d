"""DEQ-INR data: coordinate grids, PSNR, the three signals, batching and the renders."""

from __future__ import annotations

import logging
import math
import wave

import numpy as np
import pytest
import torch

from deqzoo.data import sources
from projects.deq_inr.data import (
    AudioINRData,
    CoordinateDataModule,
    ImageINRData,
    Signal,
    VideoINRData,
    coordinate_grid,
    psnr,
    read_wav,
)
from projects.deq_inr.render import (
    reconstruction_name,
    save_reconstruction,
    video_grid,
    write_png,
    write_wav,
)


def _wav(path, samples: np.ndarray, rate: int = 8000, width: int = 2) -> None:
    with wave.open(str(path), "wb") as f:
        f.setnchannels(samples.shape[1] if samples.ndim == 2 else 1)
        f.setsampwidth(width)
        f.setframerate(rate)
        f.writeframes(samples.tobytes())


def test_coordinate_grid_spans_minus_one_to_one_in_c_order():
    grid = coordinate_grid((3, 2))
    expected = [[-1, -1], [-1, 1], [0, -1], [0, 1], [1, -1], [1, 1]]
    assert grid.tolist() == expected
    assert coordinate_grid((1, 4))[:, 0].eq(0).all()
    with pytest.raises(ValueError, match="sizes >= 1"):
        coordinate_grid((0, 3))


def test_psnr_matches_known_values():
    assert float(psnr(0.01)) == pytest.approx(20.0)
    assert float(psnr(1e-4)) == pytest.approx(40.0)
    # Audio in [-1, 1] has range 2: the same error is 20 log10(2) dB better.
    assert float(psnr(0.01, 2.0)) == pytest.approx(20.0 + 20 * math.log10(2))
    assert math.isinf(float(psnr(0.0)))


def test_image_data_matches_the_resized_camera_and_its_grid():
    dm = ImageINRData(size=(16, 24), batch_size=100)
    dm.setup()
    assert dm.signal.grid == (16, 24) and dm.n_coords == 384
    values = dm.signal.values[..., 0]
    assert 0.0 <= float(values.min()) and float(values.max()) <= 1.0
    # Row i of the table is pixel unravel_index(i): coordinates and values stay aligned.
    r, c = np.unravel_index(200, (16, 24))
    assert dm.targets[200, 0] == values[r, c]
    assert dm.coords[200].tolist() == pytest.approx([-1 + 2 * r / 15, -1 + 2 * c / 23])


def test_image_data_rejects_a_config_that_disagrees_with_the_signal():
    dm = ImageINRData(size=(8, 8), out_channels=3)
    with pytest.raises(ValueError, match="out_channels=3.*has 1"):
        dm.setup()
    with pytest.raises(ValueError, match="scikit-image sample 'nope'"):
        ImageINRData(image="nope")


def test_training_batches_visit_every_coordinate_once_per_pass():
    dm = ImageINRData(size=(10, 10), batch_size=32, steps_per_epoch=5, seed=3)
    dm.setup()
    seen = []
    for _ in range(2):  # 2 epochs of 5 batches = 320 draws = 3.2 passes over 100 coordinates
        for batch in dm.train_dataloader():
            assert torch.equal(batch["coords"], dm.coords[batch["index"]])
            assert torch.equal(batch["target"], dm.targets[batch["index"]])
            seen.append(batch["index"])
    order = torch.cat(seen)
    for start in range(0, 300, 100):
        assert sorted(order[start : start + 100].tolist()) == list(range(100))


def test_eval_batches_cover_the_table_in_order():
    dm = ImageINRData(size=(10, 10), eval_batch_size=30)
    dm.setup()
    batches = list(dm.val_dataloader())
    assert [len(b["index"]) for b in batches] == [30, 30, 30, 10]
    assert torch.equal(torch.cat([b["index"] for b in batches]), torch.arange(100))


def test_coordinate_data_module_validates_its_options():
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        CoordinateDataModule(batch_size=0)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        CoordinateDataModule(steps_per_epoch=0)


def test_read_wav_scales_16_and_8_bit_samples_and_mixes_channels(tmp_path):
    stereo = np.array([[16384, -16384], [32767, 32767], [-32768, 0]], np.int16)
    _wav(tmp_path / "s.wav", stereo)
    samples, rate = read_wav(tmp_path / "s.wav")
    assert rate == 8000
    assert samples.tolist() == pytest.approx([0.0, 32767 / 32768, -0.5])
    _wav(tmp_path / "u8.wav", np.array([0, 128, 255], np.uint8), width=1)
    assert read_wav(tmp_path / "u8.wav")[0].tolist() == pytest.approx([-1.0, 0.0, 127 / 128])


def test_audio_data_reads_a_wav_and_keeps_its_rate(tmp_path):
    t = np.arange(800)
    tone = (0.5 * 32767 * np.sin(2 * np.pi * 440 * t / 8000)).astype(np.int16)
    _wav(tmp_path / "tone.wav", tone)
    dm = AudioINRData(path=str(tmp_path / "tone.wav"), max_seconds=0.05, in_channels=1)
    dm.setup()
    assert dm.signal.grid == (400,) and dm.signal.rate == 8000
    assert dm.signal.value_range == (-1.0, 1.0) and dm.signal.data_range == 2.0
    assert dm.targets[:, 0].numpy() == pytest.approx(tone[:400] / 32768.0)


def test_audio_data_without_the_fetch_names_the_fetch_command(tmp_path, monkeypatch):
    dataset = sources.lookup("alsa_speech")
    # Neither in the cache (tmp_path) nor where an installed package would put it.
    missing = sources.DataSet(
        dataset.name, dataset.summary, dataset.files, sources.Debian("x", "/no")
    )
    monkeypatch.setitem(sources.DATASETS, "alsa_speech", missing)
    with pytest.raises(FileNotFoundError, match="deqzoo.data.fetch alsa_speech"):
        AudioINRData(root=str(tmp_path)).setup()


def test_video_data_reads_the_scikit_image_gif():
    dm = VideoINRData(name="no_time_for_that_tiny.gif", source="skimage", frame_step=4)
    dm.setup()
    assert dm.signal.grid == (6, 25, 14) and dm.signal.channels == 3
    assert dm.coords.shape == (6 * 25 * 14, 3)


def test_video_data_falls_back_to_the_gif_when_tree_avi_is_missing(tmp_path, monkeypatch, caplog):
    dataset = sources.lookup("opencv_samples")
    missing = sources.DataSet(
        dataset.name, dataset.summary, dataset.files, sources.Debian("x", "/no")
    )
    monkeypatch.setitem(sources.DATASETS, "opencv_samples", missing)
    with caplog.at_level(logging.WARNING):
        dm = VideoINRData(root=str(tmp_path), max_frames=2)
        dm.setup()
    assert dm.signal.grid == (2, 25, 14) and "no_time_for_that_tiny.gif" in caplog.text
    with pytest.raises(FileNotFoundError, match="deqzoo.data.fetch opencv_samples"):
        VideoINRData(root=str(tmp_path), fallback=False).setup()


def test_signal_checks_its_shape_and_kind():
    with pytest.raises(ValueError, match="image signal has 3 dimensions"):
        Signal(torch.zeros(4, 1), "image")
    with pytest.raises(ValueError, match="unknown signal kind 'sound'"):
        Signal(torch.zeros(4, 1), "sound")


def test_video_grid_tiles_frames_row_by_row():
    frames = np.arange(3, dtype=float).reshape(3, 1, 1, 1) * np.ones((3, 2, 2, 1))
    grid = video_grid(frames, columns=2, gap=1)
    assert grid.shape == (5, 5, 1)
    assert grid[0, 0, 0] == 0 and grid[0, 3, 0] == 1 and grid[3, 0, 0] == 2
    assert grid[2, 0, 0] == 1 and grid[3, 3, 0] == 1  # the gap and the unused cell are white


def test_renders_round_trip_through_png_and_wav(tmp_path):
    from PIL import Image

    image = np.linspace(0, 1, 12).reshape(3, 4)
    write_png(image, tmp_path / "a.png")
    back = np.asarray(Image.open(tmp_path / "a.png"), np.float64) / 255
    assert back == pytest.approx(image, abs=0.5 / 255)
    write_wav(np.array([0.0, 0.5, -1.0]), 8000, tmp_path / "a.wav")
    samples, rate = read_wav(tmp_path / "a.wav")
    assert rate == 8000 and samples.tolist() == pytest.approx([0, 0.5, -32767 / 32768], abs=1e-4)


def test_save_reconstruction_writes_the_medium_of_the_signal(tmp_path):
    audio = Signal(torch.zeros(5, 1), "audio", (-1.0, 1.0), rate=100.0)
    video = Signal(torch.zeros(2, 3, 4, 3), "video")
    assert reconstruction_name(audio, "a") == "a.wav"
    assert reconstruction_name(video, "v") == "v.png"
    with wave.open(str(save_reconstruction(audio, torch.ones(5, 1), tmp_path / "a.wav"))) as f:
        assert (f.getnframes(), f.getframerate()) == (5, 100)
    path = save_reconstruction(video, torch.rand(24, 3), tmp_path / "v.png")
    assert path.is_file()
