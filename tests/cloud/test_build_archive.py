"""A submitted recipe archive is data: members that could write outside it are refused."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from cloud.buildservice.archive import RecipeRefused, choose_recipe, unpack_recipe
from tests.cloud.buildservice_standin import recipe_tar


def _tar_with(info: tarfile.TarInfo, data: bytes = b"") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data) if data else None)
    return buffer.getvalue()


def test_files_and_directories_are_unpacked(tmp_path: Path) -> None:
    tar = recipe_tar({"a.appl": "name: a", "files/motd": "hi", "./b.tdl": "x"})
    names = unpack_recipe(tar, tmp_path / "r")
    assert names == {"a.appl", "files/motd", "b.tdl"}
    assert (tmp_path / "r" / "files" / "motd").read_text() == "hi"


@pytest.mark.parametrize("name", ["/etc/passwd", "../escape", "files/../../escape", "", "a\\b", "x/./y"])
def test_names_leaving_the_directory_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(RecipeRefused):
        unpack_recipe(_tar_with(tarfile.TarInfo(name), b"x"), tmp_path / "r")
    assert not (tmp_path / "escape").exists()


@pytest.mark.parametrize(
    "kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE]
)
def test_links_and_devices_are_refused(tmp_path: Path, kind: bytes) -> None:
    info = tarfile.TarInfo("link")
    info.type = kind
    info.linkname = "/etc/shadow"
    with pytest.raises(RecipeRefused, match="only files and directories"):
        unpack_recipe(_tar_with(info), tmp_path / "r")
    assert not (tmp_path / "r" / "link").exists()


def test_a_member_twice_is_refused_not_overwritten(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for data in (b"first", b"second"):
            info = tarfile.TarInfo("a.appl")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(RecipeRefused, match="twice"):
        unpack_recipe(buffer.getvalue(), tmp_path / "r")
    assert (tmp_path / "r" / "a.appl").read_bytes() == b"first"


def test_not_a_tar_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RecipeRefused, match="not a tar"):
        unpack_recipe(b"name: plain yaml\n" * 40, tmp_path / "r")


def test_the_recipe_is_named_or_the_only_one_at_the_top() -> None:
    assert choose_recipe(frozenset({"a.appl", "files/x.appl"}), None) == "a.appl"
    assert choose_recipe(frozenset({"a.appl", "base.appl"}), "a.appl") == "a.appl"
    with pytest.raises(RecipeRefused, match="name the recipe"):
        choose_recipe(frozenset({"a.appl", "base.appl"}), None)
    with pytest.raises(RecipeRefused, match="no such"):
        choose_recipe(frozenset({"a.appl"}), "../a.appl")
    with pytest.raises(RecipeRefused, match="no such"):
        choose_recipe(frozenset({"a.appl", "files/motd"}), "files/motd")
