"""Every anchor file and shipped recipe loads, and its normalised JSON matches the golden file.

Regenerate the golden files after an intended change with:
    UPDATE_GOLDEN=1 .venv/bin/pytest tests/recipe/test_normalise.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from imagekit.recipe import load_recipe
from imagekit.recipe.normalise import recipe_dict, recipe_hash, recipe_json

from .conftest import APPL_ANCHORS, OWN, REPO, SHIPPED, TDL_ANCHORS, anchor_id, anchor_params

GOLDEN = Path(__file__).with_name("golden")


@pytest.mark.usefixtures("anchors")
def test_all_anchor_files_are_found() -> None:
    assert len(APPL_ANCHORS) == 22, "the issue promises 22 BoxGrinder files"
    assert len(TDL_ANCHORS) == 11, "and 11 Oz TDL files"
    assert {p.name for p in SHIPPED} >= {
        "debian-12-minimal.appl",
        "debian-12-cloud.tdl",
        "base.appl",
        "webserver.appl",
    }


def test_own_fixtures_cover_inheritance_variables_and_commands() -> None:
    assert {p.name for p in OWN} == {"grandparent.appl", "parent.appl", "child.appl", "commands.tdl"}


@pytest.mark.parametrize("path", [*SHIPPED, *OWN], ids=anchor_id)
def test_golden(path: Path) -> None:
    _compare_with_golden(path)


@pytest.mark.parametrize("path", anchor_params([*APPL_ANCHORS, *TDL_ANCHORS]), ids=anchor_id)
def test_golden_anchor(path: Path) -> None:
    _compare_with_golden(path)


def _compare_with_golden(path: Path) -> None:
    text = recipe_json(load_recipe(path, env={}))
    golden = GOLDEN / (anchor_id(path) + ".json")
    if os.environ.get("UPDATE_GOLDEN"):
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text)
    assert golden.is_file(), f"no golden file {golden}; run with UPDATE_GOLDEN=1"
    assert text == golden.read_text()


def test_json_is_stable_and_independent_of_the_checkout(tmp_path: Path) -> None:
    source = REPO / "recipes" / "webserver"
    copy = tmp_path / "elsewhere"
    copy.mkdir()
    for file in source.iterdir():
        (copy / file.name).write_bytes(file.read_bytes())
    here = load_recipe(source / "webserver.appl", env={})
    there = load_recipe(copy / "webserver.appl", env={})
    assert recipe_json(here) == recipe_json(there)
    assert recipe_hash(here) == recipe_hash(there)
    assert str(REPO) not in recipe_json(here)
    data = json.loads(recipe_json(here))
    assert list(data) == sorted(data)
    assert data["files"][0]["content"] == "index.html"
    assert recipe_dict(here)["source_path"] == "webserver.appl"


def test_hash_changes_with_content(tmp_path: Path) -> None:
    first = tmp_path / "a.appl"
    first.write_text("name: a\nos: {name: debian, version: 12}\npackages: [vim]\n")
    before = recipe_hash(load_recipe(first, env={}))
    first.write_text("name: a\nos: {name: debian, version: 12}\npackages: [vim, curl]\n")
    assert recipe_hash(load_recipe(first, env={})) != before
    assert len(before) == 64


def test_anchors_dir_holds_both_recipe_formats(anchors: Path) -> None:
    assert {p.name for p in anchors.iterdir()} >= {"boxgrinder", "oz"}
