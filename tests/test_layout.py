"""Architecture rules that code review would otherwise have to catch.

- ``imagekit/`` imports neither ``context`` nor ``marketplace``; those two never import each
  other (the CLI names them by string in ``imagekit/cli.py``).
- ``cloud/`` may import all three; nothing imports ``cloud``.
- No module grows past 650 lines, and there is no ``util.py``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("imagekit", "context", "marketplace", "cloud")
FORBIDDEN = {
    "imagekit": {"context", "marketplace", "cloud"},
    "context": {"marketplace", "cloud"},
    "marketplace": {"context", "cloud"},
    "cloud": set(),
}


def _modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py"))


def _imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(REPO)))
def test_dependencies_point_one_way(path: Path) -> None:
    package = path.relative_to(REPO).parts[0]
    bad = _imported_roots(path) & FORBIDDEN[package]
    assert not bad, f"{path.relative_to(REPO)} imports {sorted(bad)}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(REPO)))
def test_module_size_and_name(path: Path) -> None:
    assert path.name != "util.py", "helpers live with the concept they serve"
    lines = len(path.read_text().splitlines())
    assert lines <= 650, f"{path.relative_to(REPO)} has {lines} lines: split it by concept"


# Folder names that pytest, setuptools, linters, editors and .gitignore templates take for
# build output or caches: a source folder by one of these names gets skipped or deleted.
OUTPUT_NAMES = {"build", "dist", "out", "target", "tmp", "cache", "venv", "env", "node_modules"}


def test_no_source_folder_is_named_like_output() -> None:
    tracked = {p.parent for p in REPO.glob("**/*.py") if ".venv" not in p.parts and ".git" not in p.parts}
    folders = {part for d in tracked for part in d.relative_to(REPO).parts}
    assert not folders & OUTPUT_NAMES, f"rename these folders: {sorted(folders & OUTPUT_NAMES)}"


def _core_name_comparisons(path: Path) -> list[int]:
    """Lines comparing something called ``core`` with a string literal (a core named by string)."""

    def named_core(node: ast.expr) -> bool:
        return (isinstance(node, ast.Name) and node.id == "core") or (
            isinstance(node, ast.Attribute) and node.attr == "core"
        )

    lines = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(named_core(s) for s in sides) and any(
                isinstance(s, ast.Constant) and isinstance(s.value, str) for s in sides
            ):
                lines.append(node.lineno)
    return lines


def test_cores_are_chosen_through_their_enum_only() -> None:
    """Issue 21's layout: one module per core under cloud/cores/, chosen through ``CoreKind``;
    no module compares a core with a name."""
    cores = sorted(p.name for p in (REPO / "cloud" / "cores").glob("*.py"))
    assert cores == ["__init__.py", "embedded.py", "libvirt.py", "local.py", "opennebula.py"]
    found = {
        str(p.relative_to(REPO)): lines
        for p in sorted((REPO / "cloud").rglob("*.py"))
        if (lines := _core_name_comparisons(p))
    }
    assert found == {}
