"""The environment is parsed once (``imagekit/environment.py``): no other module reads it, a
command sees the values it started with, and the admin docs list every variable."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from imagekit import environment, locations
from imagekit.cli import main
from imagekit.environment import VARIABLES, Environment

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("imagekit", "context", "marketplace", "cloud")
# The parser; the CLI, which parses it at the boundary; run.py, which passes a few variables
# through to child processes; inspect.py, which sets (never reads) libguestfs's own variables.
MAY_TOUCH = {"imagekit/environment.py", "imagekit/cli.py", "imagekit/run.py", "imagekit/inspect.py"}
READERS = {"environ", "environb", "getenv", "getenvb"}


def _environment_reads(path: Path) -> list[int]:
    lines = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Attribute) and node.attr in READERS:
            lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module == "os":
            lines.extend(node.lineno for alias in node.names if alias.name in READERS)
    return lines


def test_no_module_reads_the_environment_on_its_own() -> None:
    readers = {
        f"{path.relative_to(REPO)}:{line}"
        for package in PACKAGES
        for path in sorted((REPO / package).rglob("*.py"))
        if str(path.relative_to(REPO)) not in MAY_TOUCH
        for line in _environment_reads(path)
    }
    assert not readers, f"read imagekit.environment.current() instead: {sorted(readers)}"


def test_the_grep_sees_a_reader(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("import os\nfrom os import getenv\nx = os.environ.get('A')\n")
    assert sorted(_environment_reads(module)) == [2, 3]


def test_parse_keeps_set_values_and_drops_empty_ones() -> None:
    env = Environment.parse({"IMAGEKIT_STATE": "/s", "TMPDIR": "", "EC2_URL": "http://e", "OTHER": "o"})
    assert env.state == "/s" and env.tmpdir is None and env.ec2_url == "http://e"
    assert env.named() == {"IMAGEKIT_STATE": "/s", "EC2_URL": "http://e"}
    assert env.recipe_variables["OTHER"] == "o"  # a .appl recipe's #OTHER#


def test_modules_see_the_installed_environment_not_the_process_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMAGEKIT_STATE", str(tmp_path / "process"))
    assert locations.state_dir() == tmp_path / "process"
    with environment.installed(Environment(state=str(tmp_path / "command"))):
        assert locations.state_dir() == tmp_path / "command"
    assert locations.state_dir() == tmp_path / "process"


def test_a_command_sees_the_environment_it_started_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``main`` parses the environment once: a change while the command runs is not seen."""
    from imagekit.commands import state as state_command

    seen: list[Path] = []

    def command(args: object) -> int:
        monkeypatch.setenv("IMAGEKIT_STATE", str(tmp_path / "changed"))
        seen.append(locations.state_dir())
        return 0

    monkeypatch.setenv("IMAGEKIT_STATE", str(tmp_path / "start"))
    monkeypatch.setattr(state_command, "cmd_check", command)
    assert main(["state", "check"]) == 0
    assert seen == [tmp_path / "start"]


def test_the_admin_docs_list_every_variable() -> None:
    page = (REPO / "docs" / "admin" / "environment.md").read_text()
    missing = [v.name for v in VARIABLES if f"`{v.name}`" not in page]
    assert not missing, f"docs/admin/environment.md does not list {missing}"
