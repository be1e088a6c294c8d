"""The catalogue of data sets that can be had offline, and where their cached copies live.

Every entry comes from a package registry (Debian or PyPI) and is fetched once into the cache
with ``python -m deqzoo.data.fetch NAME``; loaders call :func:`require` to find the files or to
fail with the exact command that gets them.

Data sets used by several projects are declared here (:data:`SHARED`); a project declares its
own in ``projects/<name>/data.py``::

    from deqzoo.data.sources import DataSet, Debian

    SOURCES = [DataSet("speech", "Spoken words, 48 kHz WAV", ("one.wav", "two.wav"),
                       Debian("some-sounds", "/usr/share/sounds/some"))]

and deqzoo discovers it (:func:`lookup`, :func:`catalogue`) without knowing the project.
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from deqzoo import ROOT
from torchdeq.utils.checks import Registry

__all__ = [
    "DATASETS",
    "SHARED",
    "DataSet",
    "Debian",
    "PyPI",
    "catalogue",
    "data_root",
    "fetch_command",
    "lookup",
    "require",
]


@dataclass(frozen=True)
class Debian:
    """Files shipped by a Debian package.

    Args:
        package (str): The package name (downloaded, never installed).
        directory (str): Where the package installs the files, e.g. ``/usr/share/sounds/alsa``.
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
        project (str | None): The project that declares it (filled in by the discovery);
            None for the data sets shared by several projects, which deqzoo declares.
    """

    name: str
    summary: str
    files: tuple[str, ...]
    origin: Debian | PyPI
    project: str | None = None


#: Data sets that two or more projects use, declared here; a project declares its own in a
#: ``SOURCES`` list in ``projects/<name>/data.py``.
SHARED = (
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
)

# The catalogue: the shared data sets, then those of the projects as they are discovered
# (catalogue(), lookup()).
DATASETS = Registry("data set")
for _ds in SHARED:
    DATASETS.register(_ds.name, _ds)

PROJECTS_DIR = ROOT / "projects"
# Projects whose SOURCES are registered (each once, so a test may patch an entry meanwhile).
_REGISTERED: set[str] = set()


def _register_project(project: str, module: Any) -> None:
    sources = getattr(module, "SOURCES", ())
    for dataset in sources:
        if not isinstance(dataset, DataSet):
            raise TypeError(f"projects/{project}/data.py: SOURCES holds {dataset!r}, not a DataSet")
        owned = replace(dataset, project=project)
        known = DATASETS.get(dataset.name)
        if known is not None and known != owned:
            owner = known.project or "deqzoo (shared)"
            raise ValueError(
                f"data set {dataset.name!r} of project {project!r} is already declared by "
                f"{owner}; rename one of them"
            )
        DATASETS.register(dataset.name, owned)


def _discover(import_all: bool) -> None:
    """Registers the ``SOURCES`` of the projects' data modules.

    With ``import_all`` every ``projects/<name>/data.py`` is imported; otherwise only those
    already imported (a running project's), which costs nothing.
    """
    for path in sorted(PROJECTS_DIR.glob("*/data.py")):
        project = path.parent.name
        name = f"projects.{project}.data"
        module = sys.modules.get(name)
        if module is None and import_all:
            module = importlib.import_module(name)
        if module is not None and project not in _REGISTERED:
            _register_project(project, module)
            _REGISTERED.add(project)


def catalogue() -> Registry:
    """Every data set: the shared ones and those every project declares (all imported)."""
    _discover(import_all=True)
    return DATASETS


def lookup(name: str) -> DataSet:
    """The data set ``name``, from the shared ones or any project's ``SOURCES``.

    Raises:
        OptionError: If no one declares ``name`` (the message lists the choices).
    """
    if name not in DATASETS:
        _discover(import_all=False)
    if name not in DATASETS:
        _discover(import_all=True)
    return DATASETS.lookup(name)


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
        name (str): A data set of :func:`catalogue`.
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
    dataset = lookup(name)
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
