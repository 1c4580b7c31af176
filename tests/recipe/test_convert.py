"""Round trips: converting and loading back gives the same recipe, for what both formats say."""

from __future__ import annotations

import base64
import dataclasses
from pathlib import Path

import pytest
from lxml import etree

from imagekit.errors import InputError
from imagekit.recipe import load_recipe
from imagekit.recipe.convert import to_appl, to_tdl
from imagekit.recipe.model import Command, ContentSource, Package, Recipe, Repository, SourceFormat
from imagekit.recipe.tdl import relaxng

from ..conftest import FIXTURES
from .conftest import APPL_ANCHORS, OWN, SHIPPED, TDL_ANCHORS, anchor_id, anchor_params


def _same_origin(recipe: Recipe, like: Recipe) -> Recipe:
    return dataclasses.replace(recipe, source_path=like.source_path, source_format=like.source_format)


def _appl_view(recipe: Recipe) -> Recipe:
    """What survives in .appl: BoxGrinder has no install media, package options, signed or
    sslverify repositories, or command names and types (documented in convert.py)."""

    def raw(cmds: tuple[Command, ...], prefix: str) -> tuple[Command, ...]:
        kept = [c for c in cmds if c.source is not ContentSource.URL]
        return tuple(
            Command(
                name=f"{prefix}-{i}",
                source=ContentSource.RAW,
                script=base64.b64decode(c.script).decode() if c.source is ContentSource.BASE64 else c.script,
            )
            for i, c in enumerate(kept, 1)
        )

    return dataclasses.replace(
        recipe,
        os=dataclasses.replace(recipe.os, product_key="", icicle_command=""),
        install=recipe.install and dataclasses.replace(recipe.install, extras=()),
        packages=tuple(Package(p.name) for p in recipe.packages),
        repositories=tuple(
            dataclasses.replace(r, signed=False, ssl_verify=True) for r in recipe.repositories
        ),
        pre_commands=raw(recipe.pre_commands, "pre"),
        post_commands=raw(recipe.post_commands, "base"),
    )


def _round_trip(recipe: Recipe, tmp_path: Path, to: str) -> Recipe:
    text, _ = (to_tdl if to == "tdl" else to_appl)(recipe)
    out = tmp_path / f"converted.{to}"
    out.write_text(text)
    return load_recipe(out, env={})


@pytest.mark.parametrize("path", [*SHIPPED, *OWN, *anchor_params(APPL_ANCHORS)], ids=anchor_id)
def test_to_tdl_and_back(path: Path, tmp_path: Path) -> None:
    recipe = load_recipe(path, env={})
    if not recipe.os.name:
        # A BoxGrinder fragment without os: TDL requires <os><name>, so loading back says so.
        with pytest.raises(InputError, match=r"os\.name: expected text, got nothing"):
            _round_trip(recipe, tmp_path, "tdl")
        return
    back = _round_trip(recipe, tmp_path, "tdl")
    assert back.source_format is SourceFormat.TDL
    assert _same_origin(back, recipe) == recipe


@pytest.mark.parametrize("path", [*SHIPPED, *OWN, *anchor_params(TDL_ANCHORS)], ids=anchor_id)
def test_to_appl_and_back(path: Path, tmp_path: Path) -> None:
    recipe = load_recipe(path, env={})
    back = _round_trip(recipe, tmp_path, "appl")
    assert _same_origin(back, recipe) == _appl_view(recipe)


@pytest.mark.parametrize("path", [p for p in SHIPPED if p.suffix == ".appl"], ids=anchor_id)
def test_shipped_appl_recipes_survive_two_conversions(path: Path, tmp_path: Path) -> None:
    recipe = load_recipe(path, env={})
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    there = _round_trip(recipe, tmp_path / "one", "tdl")
    again = _round_trip(there, tmp_path / "two", "appl")
    assert _same_origin(again, recipe) == recipe


def test_plain_output_is_valid_for_the_original_tools_and_lists_what_it_lost() -> None:
    recipe = load_recipe(Path(__file__).resolve().parents[2] / "recipes" / "debian-12-cloud.tdl")
    text, lost = to_tdl(recipe, plain=True)
    assert "ik:" not in text
    assert relaxng().validate(etree.fromstring(text.encode()))
    assert "ik:firmware" in lost and "ik:users" in lost
    appl_text, appl_lost = to_appl(recipe, plain=True)
    assert "imagekit:" not in appl_text
    assert "imagekit.firmware" in appl_lost


def test_lost_fields_are_reported() -> None:
    recipe = dataclasses.replace(
        load_recipe(FIXTURES / "recipes" / "commands.tdl"),
        repositories=(Repository(name="r", url="http://r/", signed=True),),
        post_commands=(Command(name="u", source=ContentSource.URL, script="http://x/s.sh"),),
    )
    _, lost = to_appl(recipe)
    assert any("signed" in item for item in lost)
    assert any("URL command" in item for item in lost)


@pytest.mark.usefixtures("anchors")
def test_lost_iso_extras_are_reported() -> None:
    extras = load_recipe(TDL_ANCHORS[3])
    assert extras.install is not None and extras.install.extras
    assert "os install extras (ISO extras)" in to_appl(extras)[1]
