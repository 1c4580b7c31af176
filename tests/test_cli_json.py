"""``--json`` is declared once, in ``imagekit/cli.py``, like ``--state`` (issue 22, point 6):
accepted before the command and after it, by every command, and declared by none of them."""

from __future__ import annotations

import argparse
import json

import pytest

from imagekit.cli import COMMANDS, main, reference_parser

from .conftest import REPO


def _out(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(list(argv)) == 0
    return capsys.readouterr().out


def test_json_before_or_after_the_command_means_the_same(capsys: pytest.CaptureFixture[str]) -> None:
    table = _out(capsys, "net", "list")
    assert table.startswith("ID  NAME")
    for argv in (["--json", "net", "list"], ["net", "list", "--json"], ["net", "--json", "list"]):
        assert json.loads(_out(capsys, *argv)) == []
    report = json.loads(_out(capsys, "--json", "state", "check"))
    assert report == json.loads(_out(capsys, "state", "check", "--json"))
    assert set(report) >= {"version", "integrity"}


def _leaves(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    children = [
        child
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
        for child in dict.fromkeys(action.choices.values())
    ]
    return [parser] if not children else [leaf for child in children for leaf in _leaves(child)]


def test_every_command_accepts_it_with_its_help() -> None:
    leaves = _leaves(reference_parser())
    assert len(leaves) > 60
    for leaf in leaves:
        (option,) = [a for a in leaf._actions if "--json" in a.option_strings]
        assert option.help and option.default is argparse.SUPPRESS, leaf.prog


def test_no_command_declares_it() -> None:
    modules = [REPO / (module.replace(".", "/") + ".py") for module, _ in COMMANDS.values()]
    for path in {*modules, *REPO.glob("*/commands/*.py")}:
        declared = '"--json"' in path.read_text()
        assert not declared, f"{path.relative_to(REPO)} declares --json: imagekit/cli.py does, once"
