"""The root as an overlay over the package stage, and the stages kept for the next build."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

import pytest

from imagekit.builder import cache, disk, overlay, space
from imagekit.builder.workspace import Workspace
from imagekit.cli import main
from imagekit.errors import InputError
from imagekit.recipe.model import Disk, Firmware, Partition
from imagekit.state import State


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
    assert [e.key for e in kept.evict(keep=1)] == ["a"]


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


def _used(kept: overlay.KeptStages, key: str, when: float) -> None:
    os.utime(kept.directory / f".{key}.lock", (when, when))


def test_the_least_recently_used_beyond_the_limit_go(tmp_path: Path) -> None:
    kept = overlay.KeptStages.beside(tmp_path, limit=2)
    for n, key in enumerate("abc"):
        assert kept.keep(key, _stage(tmp_path / f"stage-{key}", key))
        _used(kept, key, 1000 + n)
    assert [e.key for e in kept.entries()] == ["c", "b"]  # a went when c came
    with kept.hold("b") as found:  # a build of b: now the most recently used
        assert found is not None
    assert kept.keep("d", _stage(tmp_path / "stage-d", "d"))
    assert [e.key for e in kept.entries()] == ["d", "b"]


def test_a_limit_of_zero_keeps_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGEKIT_KEPT_STAGES", "0")
    kept = overlay.KeptStages.beside(tmp_path, limit=overlay.kept_limit())
    assert not kept.keep("a", _stage(tmp_path / "stage-a", "a"))
    assert (tmp_path / "stage-a").is_dir()  # left to its build to remove
    monkeypatch.setenv("IMAGEKIT_KEPT_STAGES", "3")
    assert overlay.kept_limit() == 3
    monkeypatch.setenv("IMAGEKIT_KEPT_STAGES", "-1")
    with pytest.raises(InputError, match="IMAGEKIT_KEPT_STAGES"):
        overlay.kept_limit()
    monkeypatch.delenv("IMAGEKIT_KEPT_STAGES")
    assert overlay.kept_limit() == overlay.DEFAULT_LIMIT == 1


def test_evict_by_age_and_key_never_a_held_one(tmp_path: Path) -> None:
    kept = overlay.KeptStages.beside(tmp_path, limit=5)
    for key in "abcd":
        assert kept.keep(key, _stage(tmp_path / f"stage-{key}", key))
    _used(kept, "a", 1000)
    _used(kept, "b", 1000)
    (kept.directory / ".x.removing").mkdir()  # a build killed while removing x
    with kept.hold("b"):
        [entry] = [e for e in kept.entries() if e.key == "b"]
        assert entry.in_use and entry.size > 0 and entry.last_used > 1000  # holding is a use
        _used(kept, "b", 1000)
        removed = kept.evict(older_than=2000, keys={"c"})
        assert sorted(e.key for e in removed) == ["a", "c"]  # b is held
    assert [e.key for e in kept.entries()] == ["d", "b"] and not (kept.directory / ".x.removing").exists()


def test_a_stage_is_kept_only_with_room_for_the_next_build(tmp_path: Path) -> None:
    assert space.room_to_keep(tmp_path, 1)
    assert not space.room_to_keep(tmp_path, 2**40)  # a mebibyte count no disk here has


def test_cache_list_and_gc_know_the_kept_stages(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = State.open(tmp_path / "state")
    work = tmp_path / "work"
    work.mkdir()
    cache.note_work_parent(state, work)
    kept = overlay.KeptStages.beside(work, limit=5)
    for key in ("a" * 64, "b" * 64):
        assert kept.keep(key, _stage(work / f"stage-{key[0]}", key))
    _used(kept, "a" * 64, 1000)
    argv = ["--state", str(state.root), "cache"]
    assert main([*argv, "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["kept"]
    assert [(k["key"], k["path"], k["in_use"]) for k in listed] == [
        ("b" * 64, str(work / "imagekit-stages" / ("b" * 64)), False),
        ("a" * 64, str(work / "imagekit-stages" / ("a" * 64)), False),
    ]
    assert listed[0]["size"] > 0
    assert main([*argv, "list"]) == 0
    assert f"kept tree {work / 'imagekit-stages'}" in capsys.readouterr().out
    with kept.hold("b" * 64):  # a build uses it: gc leaves it
        assert main([*argv, "gc", "--kept", "0", "--json"]) == 0
    gc = json.loads(capsys.readouterr().out)
    assert [k["key"] for k in gc["kept_removed"]] == ["a" * 64] and gc["freed"] > 0
    assert main([*argv, "gc", "--older-than", "0", "--json"]) == 0
    assert [k["key"] for k in json.loads(capsys.readouterr().out)["kept_removed"]] == ["b" * 64]
    assert kept.entries() == []
    assert main([*argv, "gc", "--kept", "-1"]) == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting an overlay needs root")
@pytest.mark.parametrize("too_big", [True, False])
def test_a_layered_tree_that_mkfs_cannot_fit_is_explained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, too_big: bool
) -> None:
    """A layered build walks only what it wrote, so the tree's size is measured only when
    mkfs fails: then a tree too big for its partition is said so, any other failure kept."""
    from imagekit.builder import assemble_disk, bootloader
    from imagekit.builder.reproducible import BuildInputs, EpochOrigin
    from imagekit.errors import CommandError
    from imagekit.recipe import load_recipe

    from ..conftest import REPO

    recipe = load_recipe(REPO / "recipes" / "debian-12-minimal.appl")
    layout = disk.plan_layout(Disk(1024, (Partition("/", 1024),)), Firmware.BIOS, seed="s")
    inputs = BuildInputs("h" * 64, "inrelease:abc", 1_700_000_000, EpochOrigin.ARCHIVE, "0", "bios", "m")
    lower = _stage(tmp_path / "stage", "stage")

    def mkfs_fails(*_: object, **__: object) -> None:
        raise CommandError(["mkfs.ext4"], 1, "Could not allocate block", step="make the / filesystem")

    monkeypatch.setattr(disk, "assemble", mkfs_fails)
    monkeypatch.setattr(bootloader, "make_boot_partition", lambda *_, **__: tmp_path / "boot.fat")
    with Workspace.create(tmp_path / "work") as ws:
        assert ws.layer(lower)
        with open(ws.root / "etc" / "big", "wb") as big:  # apparent size alone is enough to say so
            big.truncate((layout.root.size_bytes if too_big else 0) + 1)
        expected = InputError if too_big else CommandError
        with pytest.raises(expected, match="partition holds" if too_big else "Could not allocate"):
            assemble_disk(recipe, layout, ws, tmp_path / "disk.raw", inputs)
