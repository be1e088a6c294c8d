"""Artefacts go into the run folder, written once (global zero), never outside it."""

from __future__ import annotations

import pytest

from deqzoo.artefacts import run_file, write_run_file


class _Trainer:
    def __init__(self, root, rank_zero=True):
        self.default_root_dir = str(root)
        self.is_global_zero = rank_zero


def test_artefacts_write_into_the_run_folder(tmp_path):
    path = write_run_file(_Trainer(tmp_path), "samples/e1.txt", "hello")
    assert path == tmp_path / "samples" / "e1.txt" and path.read_text() == "hello"
    assert write_run_file(_Trainer(tmp_path), "b.bin", b"\x00\x01").read_bytes() == b"\x00\x01"


def test_artefacts_other_processes_write_nothing(tmp_path):
    assert write_run_file(_Trainer(tmp_path, rank_zero=False), "a.txt", "x") is None
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["/etc/passwd", "../outside.txt", "a/../../b"])
def test_artefacts_names_stay_inside_the_run_folder(tmp_path, name):
    with pytest.raises(ValueError, match="inside the run folder"):
        run_file(_Trainer(tmp_path), name)
