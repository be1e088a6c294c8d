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
exclude_patterns = ["_build", "_generated"]
html_theme = "furo"
html_title = f"TorchDEQ {release}"

# Google-style docstrings only; ``Args:`` types go to the parameter list.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
autodoc_member_order = "bysource"
autodoc_default_options = {"show-inheritance": True}
# Overrides of torch / Lightning methods would otherwise show those libraries' docstrings.
autodoc_inherit_docstrings = False

myst_heading_anchors = 3
# The READMEs are written for GitHub, where skipping a heading level (## to ####) is harmless.
suppress_warnings = ["myst.header"]
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


# -- The table of every option, from ``add_deq_args`` itself ---------------------------------
GENERATED = DOCS / "_generated"


def _cell(text: str) -> str:
    return text.replace("\n", " ").replace("|", "\\|")


def write_options_table() -> None:
    """Writes ``_generated/deq_options.rst``: one row per option of ``add_deq_args``."""
    import argparse

    from torchdeq.utils import add_deq_args

    parser = add_deq_args(argparse.ArgumentParser(add_help=False))
    lines = []
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if a.option_strings]
        if not actions:
            continue
        lines += [
            f".. list-table:: {group.title}",
            "   :header-rows: 1",
            "   :widths: 22 18 60",
            "",
            "   * - option",
            "     - default",
            "     - meaning",
        ]
        for action in actions:
            meaning = action.help or ""
            if action.choices:
                meaning += f" (one of {', '.join(repr(c) for c in action.choices)})"
            if action.nargs == "+" and "one" not in meaning:
                meaning += " (one or more values)"
            lines += [
                f"   * - ``{action.dest}``",
                f"     - ``{action.default!r}``",
                f"     - {_cell(meaning.strip())}".rstrip(),
            ]
        lines.append("")
    GENERATED.mkdir(exist_ok=True)
    text = "\n".join(lines)
    target = GENERATED / "deq_options.rst"
    if not target.exists() or target.read_text() != text:
        target.write_text(text)


write_options_table()


# -- Cross-references ------------------------------------------------------------------------
# Every reference must resolve (nitpicky), except to the libraries we build on: this site is
# built offline, so there is no intersphinx inventory of PyTorch or Python to link into.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(torch|nn|collections\.abc|argparse|typing|numpy|os|pathlib)\..*"),
    (r"py:.*", r"(lightning|omegaconf|hydra|torchmetrics)\..*"),
]


def _public_base(base: type) -> type:
    """The first public class in ``base``'s MRO (private bases are not documented)."""
    return next(cls for cls in base.__mro__ if not cls.__name__.startswith("_"))


def _public_bases(app, name, obj, options, bases: list) -> None:
    bases[:] = list(dict.fromkeys(_public_base(b) for b in bases))


def _importable(path: str) -> bool:
    """Whether the dotted ``path`` names a module of ours, or an object in one."""
    import importlib

    if path.split(".")[0] not in ("torchdeq", "deqzoo", "projects"):
        return False
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for name in parts[cut:]:
                obj = getattr(obj, name)
        except AttributeError:
            return False
        return True
    return False


def _resolve_short_names(app, env, node, contnode):
    """Resolves ``:class:`OptionError``` from any module to the one documented object so named.

    Docstrings name objects the way their own module imports them; the page documents each
    object once, under its public path. References to private names render as plain code, and
    so do the undotted words of docstring types that name nothing documented ("int, optional",
    "Tensor or tuple of Tensors", "callable") and the dotted paths of internal modules and
    objects that exist but have no section. A path that names nothing stays an error.
    """
    if node.get("refdomain") != "py":
        return None
    target = node["reftarget"].lstrip(".~")
    if target.rsplit(".", 1)[-1].startswith("_"):
        return contnode
    objects = env.get_domain("py").objects
    matches = [
        name
        for name, entry in objects.items()
        if not entry.aliased and (name == target or name.endswith("." + target))
    ]
    if len(matches) != 1:
        # type fields and annotations make "specific" references; explicit roles do not
        if node.get("refspecific") and "." not in target and not matches:
            return contnode
        # an internal module or object that exists but has no section: plain code, no link
        return contnode if not matches and _importable(target) else None
    from sphinx.util.nodes import make_refnode

    entry = objects[matches[0]]
    return make_refnode(app.builder, node["refdoc"], entry.docname, entry.node_id, contnode)


def _readme_links():
    """A post-transform that resolves the project READMEs' links to repository files.

    MyST would report them as missing: the site holds no copies of the repository's files. A
    link to another project's README goes to that project's page; a link to any other existing
    file (a config, a module) keeps its text; a link to a missing file stays an error.
    """
    from docutils import nodes
    from sphinx import addnodes
    from sphinx.transforms.post_transforms import SphinxPostTransform

    class ReadmeLinks(SphinxPostTransform):
        default_priority = 5  # before MyST's reference resolver

        def run(self, **kwargs) -> None:
            for node in list(self.document.findall(addnodes.pending_xref)):
                if node.get("reftype") != "myst" or node.get("refdomain"):
                    continue
                readme = Path(node.source or "")
                if readme.name != "README.md" or not readme.is_relative_to(ROOT / "projects"):
                    continue
                target = (readme.parent / node["reftarget"].split("#")[0]).resolve()
                if not target.is_relative_to(ROOT) or not target.exists():
                    continue
                text = nodes.inline("", "", *node[0].deepcopy().children)
                if target.name == "README.md" and target.parent.name in ZOO_PROJECTS:
                    page = f"zoo/projects/{target.parent.name}"
                    uri = self.app.builder.get_relative_uri(node["refdoc"], page)
                    text = nodes.reference("", "", text, internal=True, refuri=uri)
                node.replace_self(text)

    return ReadmeLinks


def setup(app):
    app.connect("autodoc-process-bases", _public_bases)
    app.connect("missing-reference", _resolve_short_names)
    app.add_post_transform(_readme_links())
