"""The root as an overlay over the package stage, and the stages kept for the next build."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

from imagekit.builder import disk, overlay
from imagekit.builder.workspace import Workspace
from imagekit.recipe.model import Disk, Firmware, Partition


def _stage(path: Path, marker: str) -> Path:
    (path / "etc").mkdir(parents=True)
    (path / "etc" / "marker").write_text(marker)
    return path


def test_a_kept_stage_is_found_and_the_others_go(tmp_path: Path) -> None:
    kept = overlay.KeptStages.beside(tmp_path)
    with kept.hold("a") as found:
        assert found is None  # nothing kept yet, and no directory made for it
    assert not kept.directory.exists()
    assert kept.keep("a", _stage(tmp_path / "stage-a", "a"))
    assert oct(kept.directory.stat().st_mode & 0o777) == "0o700"
    with kept.hold("a") as found:
        assert found is not None and (found / "etc/marker").read_text() == "a"
    assert kept.keep("b", _stage(tmp_path / "stage-b", "b"))
    assert sorted(p.name for p in kept.directory.iterdir() if not p.name.startswith(".")) == ["b"]
    # The same stage kept twice: the second copy is left to its build to remove.
    assert not kept.keep("b", _stage(tmp_path / "stage-b2", "b"))
    assert (tmp_path / "stage-b2").is_dir()


def test_a_stage_a_build_holds_is_not_removed(tmp_path: Path) -> None:
    kept = overlay.KeptStages.beside(tmp_path)
    assert kept.keep("a", _stage(tmp_path / "stage-a", "a"))
    with kept.hold("a") as found:
        assert found is not None
        assert kept.keep("b", _stage(tmp_path / "stage-b", "b"))  # evicts what it can
        assert (found / "etc/marker").read_text() == "a"
    assert kept.evict(but="b") == ["a"]


def test_a_directory_that_is_not_private_is_not_used(tmp_path: Path) -> None:
    kept = overlay.KeptStages.beside(tmp_path)
    kept.directory.mkdir(mode=0o755)
    kept.directory.chmod(0o777)  # another user could have planted a stage in it
    (kept.directory / "a").mkdir()
    with kept.hold("a") as found:
        assert found is None
    assert not kept.keep("b", _stage(tmp_path / "stage-b", "b"))


def test_only_builds_without_sandbox_and_split_partitions_are_layered() -> None:
    plain = disk.plan_layout(Disk(3072, (Partition("/", 3072),)), Firmware.HYBRID, seed="s")
    two = (Partition("/", 2560), Partition("/home", 512))
    home = disk.plan_layout(Disk(3072, two), Firmware.HYBRID, seed="s")
    assert overlay.layered(plain, None)
    assert not overlay.layered(home, None)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting an overlay needs root")
def test_the_root_layered_over_a_stage_leaves_the_stage_as_it_was(tmp_path: Path) -> None:
    lower = _stage(tmp_path / "stage", "stage")
    os.link(lower / "etc" / "marker", lower / "etc" / "marker2")
    with Workspace.create(tmp_path / "work") as ws:
        assert ws.layer(lower)
        (ws.root / "etc" / "new").write_text("upper")
        os.utime(ws.root / "etc" / "marker", (1, 1))  # copied up, still one file with two names
        first, second = (ws.root / "etc" / "marker").stat(), (ws.root / "etc" / "marker2").stat()
        assert first.st_ino == second.st_ino and second.st_mtime == 1 and first.st_nlink == 2
        ws.drop_root()  # in the background, joined when the workspace goes
    mounts = Path("/proc/mounts").read_text().splitlines()
    assert not any(line.split()[1] == str(ws.root) for line in mounts)
    assert not (lower / "etc" / "new").exists() and (lower / "etc" / "marker").stat().st_mtime != 1
    assert not (tmp_path / "work").exists() or list((tmp_path / "work").iterdir()) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting an overlay needs root")
def test_a_failed_build_unmounts_its_root(tmp_path: Path) -> None:
    lower = _stage(tmp_path / "stage", "stage")
    with pytest.raises(RuntimeError), Workspace.create(tmp_path / "work") as ws:
        assert ws.layer(lower)
        with open(ws.root / "etc" / "marker") as held:  # busy: unmounted lazily
            fcntl.flock(held.fileno(), fcntl.LOCK_SH)
            raise RuntimeError("boom")
    assert str(ws.root) not in Path("/proc/mounts").read_text()
    assert not ws.base.exists()
    assert (lower / "etc" / "marker").read_text() == "stage"
