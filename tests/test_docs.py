"""The documentation cannot drift from the code.

- Every command, sub-command, option and positional argument of ``imagekit`` has help text (the
  CLI reference in ``docs/reference/cli.md`` is rendered from these parsers by sphinx-argparse).
- Every shell example (a ``sh``/``console`` block) in ``README.md`` and ``docs/`` runs here, or
  is preceded by ``% not runnable: WHY`` (``<!-- not runnable: WHY -->`` in the README).
- ``docs/architecture.md`` names every module of the four packages, and no module that is gone.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from imagekit.cli import reference_parser

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
PAGES = [REPO / "README.md", *sorted(DOCS.rglob("*.md"))]
SHELL_LANGUAGES = {"sh", "console", "shell", "bash"}
NOT_RUNNABLE = re.compile(r"^(?:%\s*|<!--\s*)not runnable:\s*(?P<why>.*?)\s*(?:-->)?$")
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>```+|~~~+)\s*(?P<lang>\{[^}]*\}|[^\s`]*)")
PACKAGES = ("imagekit", "context", "marketplace", "cloud")


# --- help text -------------------------------------------------------------------------------


def _walk(parser: argparse.ArgumentParser, path: str) -> list[str]:
    """Every option, positional and sub-command under ``parser`` that has no help, by its path."""
    missing: list[str] = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._VersionAction):
            continue
        if isinstance(action, argparse._SubParsersAction):
            helped = {choice.dest for choice in action._choices_actions if choice.help}
            for name, sub in action.choices.items():
                if name not in helped:
                    missing.append(f"{path} {name} (the command itself)")
                missing += _walk(sub, f"{path} {name}")
        elif not action.help or action.help == argparse.SUPPRESS:
            missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
    return missing


def test_every_command_and_option_has_help() -> None:
    missing = _walk(reference_parser(), "imagekit")
    assert not missing, "no help text (add help=… where it is declared):\n  " + "\n  ".join(missing)


def test_the_reference_page_renders_the_real_parser() -> None:
    page = (DOCS / "reference" / "cli.md").read_text()
    assert ":module: imagekit.cli" in page and ":func: reference_parser" in page


def test_reference_parser_registers_every_group() -> None:
    parser = reference_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, group in sub.choices.items():
        assert (
            any(isinstance(a, argparse._SubParsersAction) for a in group._actions) or len(group._actions) > 1
        ), f"imagekit {name}: the reference parser did not register the group"


# --- shell examples --------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    language: str
    text: str
    not_runnable: str | None  # the reason given, or None

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def _blocks(page: Path) -> list[Block]:
    blocks: list[Block] = []
    lines = page.read_text().splitlines()
    i = 0
    while i < len(lines):
        opened = FENCE.match(lines[i])
        if not opened:
            i += 1
            continue
        indent, fence = len(opened["indent"]), opened["fence"]
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip().startswith(fence)), len(lines))
        body = "\n".join(line[indent:] for line in lines[i + 1 : end])
        before = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marker = NOT_RUNNABLE.match(before)
        blocks.append(Block(page, i + 1, opened["lang"], body, marker["why"] if marker else None))
        i = end + 1
    return blocks


ALL_BLOCKS = [block for page in PAGES for block in _blocks(page)]
SHELL_BLOCKS = [b for b in ALL_BLOCKS if b.language in SHELL_LANGUAGES]
RUNNABLE = [b for b in SHELL_BLOCKS if b.not_runnable is None]


def test_every_block_says_its_language() -> None:
    bare = [b.name for b in ALL_BLOCKS if not b.language]
    assert not bare, f"fenced blocks without a language (sh, console, text, …): {bare}"


def test_every_not_runnable_marker_says_why() -> None:
    silent = [b.name for b in SHELL_BLOCKS if b.not_runnable is not None and len(b.not_runnable) < 8]
    assert not silent, f"'not runnable:' needs a reason: {silent}"
    stray = [b.name for b in ALL_BLOCKS if b.language not in SHELL_LANGUAGES and b.not_runnable]
    assert not stray, f"'not runnable:' on a block that is not a shell example: {stray}"


def test_there_are_runnable_examples() -> None:
    assert len(RUNNABLE) >= 5, [b.name for b in RUNNABLE]


@dataclass(frozen=True)
class Command:
    script: str
    expected: tuple[str, ...]


def _commands(block: Block) -> list[Command]:
    if block.language != "console":
        return [Command(block.text, ())]
    commands: list[Command] = []
    script: list[str] = []
    expected: list[str] = []
    continued = False
    for line in block.text.splitlines():
        if continued or line.startswith("$ "):
            if line.startswith("$ ") and script:
                commands.append(Command("\n".join(script), tuple(expected)))
                script, expected = [], []
            script.append(line[2:] if line.startswith("$ ") else line)
            continued = line.endswith("\\")
        elif line.strip():
            expected.append(line.rstrip())
    if script:
        commands.append(Command("\n".join(script), tuple(expected)))
    return commands


def _line_pattern(expected: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in expected.split("…")))


def _assert_shows(output: str, expected: tuple[str, ...], where: str) -> None:
    lines = [line.rstrip() for line in output.splitlines()]
    at = 0
    for want in expected:
        pattern = _line_pattern(want)
        found = next((k for k in range(at, len(lines)) if pattern.fullmatch(lines[k])), None)
        assert found is not None, f"{where}: expected the line {want!r} (in order) in:\n{output}"
        at = found + 1


@pytest.fixture
def sandbox(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A working directory with the checkout's inputs linked in, a fresh state, this checkout's code."""
    for name in ("recipes", "etc", "tests"):
        (tmp_path / name).symlink_to(REPO / name)
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "LANG": "C.UTF-8",
        "PYTHONPATH": str(REPO),
        "IMAGEKIT_STATE": str(tmp_path / "state"),
        "IMAGEKIT_ETC": str(REPO / "etc"),
        "IMAGEKIT_MARKET": "http://127.0.0.1:9",  # nothing listens: no example may need a registry
    }
    return tmp_path, env


PRELUDE = f'set -euo pipefail\nimagekit() {{ "{sys.executable}" -m imagekit "$@"; }}\n'


@pytest.mark.parametrize("block", RUNNABLE, ids=lambda b: b.name)
def test_shell_example_runs(block: Block, sandbox: tuple[Path, dict[str, str]]) -> None:
    cwd, env = sandbox
    for command in _commands(block):
        done = subprocess.run(
            ["bash", "-c", PRELUDE + command.script],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=50,
            check=False,
        )
        where = f"{block.name}: {command.script.splitlines()[0]}"
        assert done.returncode == 0, f"{where}: exit {done.returncode}\n{done.stdout}{done.stderr}"
        _assert_shows(done.stdout + done.stderr, command.expected, where)


# --- the architecture page's module tables ---------------------------------------------------

MODULE_CELL = re.compile(r"^\|\s*`(?P<module>[\w/]+\.py)`\s*\|")


def _holds_code(path: Path) -> bool:
    """A module, or a package ``__init__.py`` that defines something (``imagekit/builder/``'s does)."""
    if path.name != "__init__.py":
        return True
    body = ast.parse(path.read_text()).body
    return any(isinstance(node, ast.FunctionDef | ast.ClassDef) for node in body)


def _modules_in_tree() -> set[str]:
    return {
        str(path.relative_to(REPO))
        for package in PACKAGES
        for path in (REPO / package).rglob("*.py")
        if _holds_code(path)
    }


def _modules_in_tables() -> list[str]:
    text = (DOCS / "architecture.md").read_text()
    return [m["module"] for line in text.splitlines() if (m := MODULE_CELL.match(line))]


def test_architecture_names_every_module() -> None:
    named = _modules_in_tables()
    duplicated = sorted({m for m in named if named.count(m) > 1})
    missing = sorted(_modules_in_tree() - set(named))
    gone = sorted(set(named) - _modules_in_tree())
    problems = [f"{m} is not in docs/architecture.md: add `| `{m}` | what it owns |`" for m in missing]
    problems += [f"docs/architecture.md names {m}, which does not exist: remove or rename it" for m in gone]
    problems += [f"docs/architecture.md names {m} more than once" for m in duplicated]
    assert not problems, "\n".join(problems)
