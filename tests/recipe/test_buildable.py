"""Buildability is separate from validity: other OSes load, building them fails in one line."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from imagekit.errors import InputError
from imagekit.recipe import load_recipe
from imagekit.recipe.buildable import check_buildable, debian_arch, debian_suite
from imagekit.recipe.model import Disk, Firmware, OperatingSystem, Partition, Recipe, SourceFormat

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


GATE = """name: gate
os:
  name: debian
  version: 12
hardware:
  partitions:
    "/":
      size: 2
      passphrase: secret
packages:
  - openssh-server
  - "@gnome-desktop"
repos:
  - name: yum
    mirrorlist: http://mirrors.example.org/list
imagekit:
  arch: aarch64
"""


def test_every_reason_a_recipe_cannot_be_built_at_once_with_file_line_col(tmp_path: Path) -> None:
    """The checks the builder's steps made one at a time, mid-build and without a place (the
    architecture in rootfs, groups and repositories, partitions in disk), are the gate's: all of
    them before any work, each at the line and column where it was written, with its key path."""
    path = tmp_path / "gate.appl"
    path.write_text(GATE)
    with pytest.raises(InputError) as refused:
        check_buildable(load_recipe(path))
    assert str(refused.value).splitlines() == [
        f"{path}:17:9: os.arch: expected x86_64, got 'aarch64' (only amd64 images are built)",
        f"{path}:12:5: packages.@gnome-desktop: group '@gnome-desktop' has no Debian equivalent"
        " (known groups: @core, @base, @standard, @minimal, @buildsys-build, @development-tools,"
        " @web-server, @mysql, @postgresql)",
        f"{path}:14:5: repositories.yum: mirrorlist is a yum feature; give a baseurl for apt",
        f"{path}:7:5: hardware.partitions./.passphrase: encrypted partitions are not supported",
    ]


def test_the_gate_uses_the_builds_firmware() -> None:
    """Four partitions (the boot one, three more) fit GPT, not MBR: ``--firmware`` decides."""
    parts = tuple(Partition(f"/{name}", 1) for name in "abc")
    three = dataclasses.replace(recipe("debian", "12"), disk=Disk(4096, parts))
    check_buildable(three, Firmware.UEFI)
    with pytest.raises(InputError, match="hardware.partitions: an MBR disk holds 4 partitions"):
        check_buildable(three, Firmware.BIOS)


def test_locations_are_not_the_recipes_content(tmp_path: Path) -> None:
    """Moving a line changes where, not what: the normalised hash (the build cache key) stays."""
    from imagekit.recipe.normalise import recipe_hash

    first, second = tmp_path / "a.appl", tmp_path / "b" / "a.appl"
    second.parent.mkdir()
    first.write_text(GATE)
    second.write_text("\n\n" + GATE)
    a, b = load_recipe(first), load_recipe(second)
    assert a.locations["os.arch"] != b.locations["os.arch"]
    assert a == dataclasses.replace(b, source_path=a.source_path) and recipe_hash(a) == recipe_hash(b)


def test_a_tdl_recipe_is_refused_where_it_was_written_too(tmp_path: Path) -> None:
    path = tmp_path / "gate.tdl"
    path.write_text(
        "<template>\n  <name>gate</name>\n  <os>\n    <name>Debian</name>\n    <version>12</version>\n"
        '    <arch>aarch64</arch>\n    <install type="url"><url>http://deb.debian.org/debian</url></install>\n'
        '  </os>\n  <packages>\n    <package name="@gnome-desktop"/>\n  </packages>\n</template>\n'
    )
    with pytest.raises(InputError) as refused:
        check_buildable(load_recipe(path))
    lines = str(refused.value).splitlines()
    assert [line.split(": ", 2)[:2] for line in lines] == [
        [f"{path}:6:5", "os.arch"],
        [f"{path}:10:5", "packages.@gnome-desktop"],
    ]
