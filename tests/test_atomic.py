"""imagekit.atomic, the one atomic writer: replace, no-replace (the marketplace store), parents."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from imagekit.atomic import write_atomically
from imagekit.errors import InputError


def test_replace_is_the_default(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    assert write_atomically(dest, "one") and write_atomically(dest, b"two", mode=0o600)
    assert dest.read_bytes() == b"two" and dest.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_no_replace_keeps_the_existing_file(tmp_path: Path) -> None:
    dest = tmp_path / "entry.xml"
    assert write_atomically(dest, b"first", replace=False) is True
    assert write_atomically(dest, b"second", replace=False) is False
    assert dest.read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["entry.xml"]


def test_parents_are_created_only_when_asked(tmp_path: Path) -> None:
    deep = tmp_path / "a" / "b" / "c.xml"
    with pytest.raises(InputError, match=r"c.xml: cannot write: No such file or directory"):
        write_atomically(deep, b"x")
    assert write_atomically(deep, b"x", parents=True) and deep.read_bytes() == b"x"


def test_a_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    for replace in (True, False):
        with pytest.raises(InputError, match="cannot write: No space left on device"):
            write_atomically(tmp_path / "x", b"data", replace=replace)
    assert list(tmp_path.iterdir()) == []
