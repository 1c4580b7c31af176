"""Buildability is separate from validity: other OSes load, building them fails in one line."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from imagekit.errors import InputError
from imagekit.recipe import load_recipe
from imagekit.recipe.buildable import debian_arch, debian_suite
from imagekit.recipe.model import OperatingSystem, Recipe, SourceFormat

from .conftest import ANCHORS, REPO


def recipe(name: str, version: str, arch: str = "x86_64") -> Recipe:
    return Recipe(
        name="r",
        os=OperatingSystem(name, version, arch),
        source_path=Path("/x/r.appl"),
        source_format=SourceFormat.APPL,
    )


@pytest.mark.parametrize(
    ("name", "version", "suite"),
    [("debian", "12", "bookworm"), ("Debian", "bookworm", "bookworm"), ("DEBIAN", "12.5", "bookworm"),
     ("debian", "11", "bullseye"), ("Debian", "Bullseye", "bullseye"), ("debian", "13", "trixie"),
     ("debian", "trixie", "trixie")],
)  # fmt: skip
def test_debian_names_as_users_write_them(name: str, version: str, suite: str) -> None:
    assert debian_suite(recipe(name, version)) == suite


@pytest.mark.parametrize(
    ("name", "version"),
    [("fedora", "15"), ("CentOS", "5"), ("RHEL-5", "U7"), ("OpenSUSE", "15.5"), ("Windows", "2000"),
     ("debian", "9"), ("Ubuntu", "22.04"), ("", "")],
)  # fmt: skip
def test_other_systems_fail_in_one_line(name: str, version: str) -> None:
    with pytest.raises(InputError) as caught:
        debian_suite(recipe(name, version))
    message = str(caught.value)
    assert "\n" not in message
    assert f"cannot build {name} {version}".strip() in message or "without an os" in message
    assert "Debian 12 (bookworm)" in message and "Debian's archive" in message


@pytest.mark.usefixtures("anchors")
def test_anchor_recipes_load_but_do_not_build() -> None:
    for path in [
        ANCHORS / "oz" / "examples" / "win2k.tdl",
        ANCHORS / "boxgrinder" / "examples" / "CentOS-lamp.appl",
    ]:
        loaded = load_recipe(path, env={})
        with pytest.raises(InputError, match="cannot build"):
            debian_suite(loaded)


def test_shipped_recipes_build_bookworm_amd64() -> None:
    for path in [*(REPO / "recipes").rglob("*.appl"), *(REPO / "recipes").rglob("*.tdl")]:
        loaded = load_recipe(path, env={})
        assert (debian_suite(loaded), debian_arch(loaded)) == ("bookworm", "amd64")


def test_arch_mapping() -> None:
    assert debian_arch(recipe("debian", "12", "aarch64")) == "arm64"
    with pytest.raises(InputError, match="os.arch: cannot build for ppc64 here"):
        debian_arch(dataclasses.replace(recipe("debian", "12"), os=OperatingSystem("debian", "12", "ppc64")))
