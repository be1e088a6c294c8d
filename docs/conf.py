"""Sphinx configuration of the TorchDEQ + DEQ Zoo documentation.

Build (warnings are errors): ``python -m sphinx -W -b html docs docs/_build``.
"""

from __future__ import annotations

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))

import torchdeq  # noqa: E402

project = "TorchDEQ"
author = "The TorchDEQ authors"
copyright = "2023-2026, The TorchDEQ authors"
release = version = torchdeq.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
html_theme = "furo"
html_title = f"TorchDEQ {release}"

# Google-style docstrings only; ``Args:`` types go to the parameter list.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
autodoc_member_order = "bysource"
autodoc_default_options = {"show-inheritance": True}

myst_heading_anchors = 3
myst_enable_extensions = ["dollarmath"]

# -- The zoo: one page per ``projects/<name>/README.md`` ------------------------------------
# Each project's README is the page itself (included, not copied), so a new project appears
# once it has a README; the pages are regenerated on every build and are not committed.
ZOO_PAGES = DOCS / "zoo" / "projects"


def write_zoo_pages() -> list[str]:
    """Writes ``zoo/projects/<name>.md`` for every project README; returns the names."""
    ZOO_PAGES.mkdir(parents=True, exist_ok=True)
    names = sorted(p.parent.name for p in (ROOT / "projects").glob("*/README.md"))
    for stale in ZOO_PAGES.glob("*.md"):
        if stale.stem not in names:
            stale.unlink()
    for name in names:
        text = (
            f"```{{include}} ../../../projects/{name}/README.md\n"
            ":relative-images:\n:relative-docs: ../../..\n```\n"
        )
        page = ZOO_PAGES / f"{name}.md"
        if not page.exists() or page.read_text() != text:
            page.write_text(text)
    return names


ZOO_PROJECTS = write_zoo_pages()
