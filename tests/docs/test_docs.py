"""The documentation: docstring examples run, the pages' code runs, the site builds.

Docstring examples may use ``torch`` without importing it (every page of these docs assumes
``import torch``) and the names of their own module; anything else they import themselves.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from torchdeq.utils.checks import Registry

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PACKAGES = ("torchdeq", "deqzoo", "projects")
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _modules() -> list[str]:
    names = []
    for package in PACKAGES:
        path = importlib.import_module(package).__path__
        names += [package] + [m.name for m in pkgutil.walk_packages(path, package + ".")]
    return sorted(set(names))


def _docstring_tests() -> list[doctest.DocTest]:
    finder = doctest.DocTestFinder(exclude_empty=True)
    tests = []
    for name in _modules():
        module = importlib.import_module(name)
        tests += [t for t in finder.find(module, name, extraglobs={"torch": torch}) if t.examples]
    return sorted(tests, key=lambda t: t.name)


DOCSTRING_TESTS = _docstring_tests()


def _registries() -> list[dict]:
    """Every name table an example can add to: the registries and the norms' module tables."""
    tables = [
        value
        for name, module in list(sys.modules.items())
        if name.split(".")[0] in PACKAGES
        for value in list(vars(module).values())
        if isinstance(value, Registry)
    ]
    from torchdeq.norm.base import BaseNorm

    pending, seen = [BaseNorm], set()
    while pending:
        cls = pending.pop()
        if cls in seen:
            continue
        seen.add(cls)
        pending += cls.__subclasses__()
        if isinstance(getattr(cls, "_target_modules", None), dict):
            tables.append(cls._target_modules)
    return tables


@pytest.fixture
def restored_registries():
    """Undoes what an example registers (``register_solver('newton', ...)`` and the like)."""
    saved = [(table, dict(table)) for table in _registries()]
    yield
    for table, entries in saved:
        table.clear()
        table.update(entries)


def _run(test: doctest.DocTest) -> None:
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    report: list[str] = []
    # Examples run on copies of the globals, so one example cannot leak names into another.
    test.globs = dict(test.globs)
    result = runner.run(test, out=report.append, clear_globs=True)
    assert result.failed == 0, "".join(report)


def test_docstring_examples_are_collected():
    names = {t.name for t in DOCSTRING_TESTS}
    # One example per package at least, so a broken walk cannot pass as "nothing failed".
    assert {"torchdeq.solver.get_solver", "torchdeq.core.get_deq", "torchdeq.norm"} <= names
    assert any(n.startswith("deqzoo.") for n in names)
    assert len(DOCSTRING_TESTS) >= 90
    assert DOCS / "options.rst" in PAGES_WITH_EXAMPLES


@pytest.mark.usefixtures("restored_registries")
@pytest.mark.parametrize("test", DOCSTRING_TESTS, ids=lambda t: t.name)
def test_docstring_example(test: doctest.DocTest):
    _run(test)


PAGES_WITH_EXAMPLES = [p for p in sorted(DOCS.glob("*.rst")) if ">>>" in p.read_text()]


@pytest.mark.usefixtures("restored_registries")
@pytest.mark.parametrize("page", PAGES_WITH_EXAMPLES, ids=lambda p: p.name)
def test_page_examples(page: Path, monkeypatch):
    from torchdeq.utils import checks

    monkeypatch.setattr(checks, "_warned", set())  # the pages show the first warning
    text = page.read_text()
    test = doctest.DocTestParser().get_doctest(text, {"torch": torch}, page.name, str(page), 0)
    _run(test)


def test_get_started_program_trains():
    program = runpy.run_path(str(DOCS / "examples" / "quickstart.py"), run_name="quickstart")
    losses = program["losses"]
    assert len(losses) == 3 and losses[-1] < losses[0]


def _info_keys() -> set[str]:
    """Every key of ``info`` that a DEQ returns, over cores, solvers, training and eval."""
    from torchdeq import get_deq

    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 3).double()
    x = torch.randn(2, 3, dtype=torch.float64)

    def f(z):
        return torch.tanh(0.5 * lin(z) + x)

    keys = set()
    for core in ("sliced", "indexing"):
        for solver in ("fixed_point_iter", "simple_fixed_point_iter", "anderson", "broyden"):
            deq = get_deq(core=core, f_solver=solver, f_max_iter=4)
            for training, sradius in ((True, False), (False, False), (False, True)):
                deq.train(training)
                _, info = deq(f, torch.zeros(2, 3, dtype=torch.float64), sradius_mode=sradius)
                keys |= set(info)
    return keys


def test_statistics_page_documents_every_info_key():
    from torchdeq.solver.stat import SolverStat

    keys = _info_keys()
    assert {"abs_lowest", "rel_lowest", "abs_trace", "rel_trace", "nstep"} <= keys
    page = (DOCS / "statistics.rst").read_text()
    assert not [k for k in keys if f"``{k}``" not in page]
    assert not [k for k in keys if f"``'{k}'``" not in SolverStat.__doc__]


def test_zoo_has_a_page_per_project_readme():
    sys.path.insert(0, str(DOCS))
    try:
        conf = runpy.run_path(str(DOCS / "conf.py"))
    finally:
        sys.path.remove(str(DOCS))
    readmes = sorted(p.parent.name for p in (ROOT / "projects").glob("*/README.md"))
    assert conf["ZOO_PROJECTS"] == readmes and readmes
    pages = sorted(p.stem for p in (DOCS / "zoo" / "projects").glob("*.md"))
    assert pages == readmes


def _exports(module: str) -> list[str]:
    return list(getattr(importlib.import_module(module), "__all__", ()))


def _public_names() -> set[str]:
    names = set()
    packages = ("core", "dropout", "loss", "norm", "solver", "utils")
    for package in ["torchdeq"] + [f"torchdeq.{p}" for p in packages]:
        names |= set(importlib.import_module(package).__all__)
    return names


@pytest.mark.slow
def test_docs_build_without_warnings(tmp_path):
    out = tmp_path / "html"
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", "docs", out]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]

    from sphinx.util.inventory import InventoryFile

    with open(out / "objects.inv", "rb") as stream:
        inventory = InventoryFile.load(stream, "", lambda base, uri: uri)
    documented = {
        name.rsplit(".", 1)[-1]
        for kind, entries in inventory.items()
        if kind.startswith("py:")
        for name in entries
    }
    assert not sorted(_public_names() - documented)
    # every framework module with a public surface has its section
    framework = {m for m in _modules() if m.startswith("deqzoo") and _exports(m)}
    assert not sorted(framework - set(inventory["py:module"]))
    for readme in (ROOT / "projects").glob("*/README.md"):
        assert (out / "zoo" / "projects" / f"{readme.parent.name}.html").is_file()
