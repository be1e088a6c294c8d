"""The framework names no project: a project lives in projects/<name>/, its configs and tests."""

from __future__ import annotations

import re

from framework_toy import ROOT

PROJECTS = sorted(p.name for p in (ROOT / "projects").iterdir() if (p / "__init__.py").is_file())


def test_layout_deqzoo_names_no_project():
    assert len(PROJECTS) >= 3
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, PROJECTS)) + r")\b", re.IGNORECASE)
    named = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in sorted((ROOT / "deqzoo").rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert named == []


def test_layout_projects_import_no_other_project():
    for project in PROJECTS:
        others = [p for p in PROJECTS if p != project]
        pattern = re.compile(r"^\s*(from|import)\s+projects\.(" + "|".join(others) + r")\b", re.M)
        for path in (ROOT / "projects" / project).rglob("*.py"):
            assert not pattern.search(path.read_text()), path
