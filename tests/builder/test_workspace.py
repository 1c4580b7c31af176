from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from imagekit.builder import space
from imagekit.builder.workspace import Workspace, remove_tree
from imagekit.errors import InputError
from imagekit.interrupt import Interrupted, interruptible
from imagekit.recipe.model import OutputFormat


def test_workspace_removed_on_success_and_failure(tmp_path: Path) -> None:
    with Workspace.create(tmp_path) as ws:
        (ws.root / "f").write_text("x")
    assert not ws.base.exists()
    with pytest.raises(RuntimeError), Workspace.create(tmp_path) as ws2:
        os.chmod(ws2.root, 0o500)  # read-only dirs do not stop the clean-up
        raise RuntimeError("boom")
    assert not ws2.base.exists()
    assert list(tmp_path.iterdir()) == []


def test_sigterm_interrupts_and_stops_child_processes(tmp_path: Path) -> None:
    with pytest.raises(Interrupted), interruptible(), Workspace.create(tmp_path) as ws:
        child = subprocess.Popen(["sleep", "60"])
        os.kill(os.getpid(), signal.SIGTERM)
    # The workspace reaps it (so Popen cannot see the status): it must simply be gone.
    assert not Path(f"/proc/{child.pid}").exists()
    assert not ws.base.exists()
    assert signal.getsignal(signal.SIGTERM) is not None


def test_remove_tree_does_not_cross_devices(tmp_path: Path) -> None:
    # /proc is another filesystem; a bind would be needed to put it inside the tree, so check
    # the device rule directly on a tree whose top is on another device than /proc.
    (tmp_path / "a/b").mkdir(parents=True)
    (tmp_path / "a/b/f").write_text("x")
    remove_tree(tmp_path / "a")
    assert not (tmp_path / "a").exists()
    remove_tree(tmp_path / "missing")


def test_space_check(tmp_path: Path) -> None:
    work, out = space.estimate(3072, (OutputFormat.QCOW2, OutputFormat.RAW))
    assert work > out > 0
    plenty = lambda p: space.Usage(10**12, 0, 10**12)  # noqa: E731
    space.check_free_space({tmp_path: work, tmp_path / "out": out}, usage=plenty)
    little = lambda p: space.Usage(10**12, 10**12 - 100 * 2**20, 100 * 2**20)  # noqa: E731
    with pytest.raises(InputError, match=r"needs about \d+ MiB, 100 MiB free"):
        space.check_free_space({tmp_path: work, tmp_path / "out": out}, usage=little)


def test_work_parent_explicit_then_tmpdir_then_ram_then_tmp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TMPDIR", raising=False)
    assert space.choose_work_parent(tmp_path / "mine", 100) == tmp_path / "mine"
    # tmp_path is not a tmpfs mount point: no RAM workspace there.
    assert space.choose_work_parent(None, 100, ram=tmp_path) == Path("/tmp")
    monkeypatch.setattr(space, "_tmpfs_with_room", lambda path, need: need < 1000)
    assert space.choose_work_parent(None, 100, ram=tmp_path) == tmp_path
    assert space.choose_work_parent(None, 5000, ram=tmp_path) == Path("/tmp")
    monkeypatch.setenv("TMPDIR", str(tmp_path / "t"))
    assert space.choose_work_parent(None, 100, ram=tmp_path) == tmp_path / "t"


def test_work_beside_the_build_is_settled_and_its_failure_raised(tmp_path: Path) -> None:
    done: list[str] = []
    with Workspace.create(tmp_path) as ws:
        ws.beside(lambda: done.append("stored"))
        ws.settle()
        assert done == ["stored"]

        def fail() -> None:
            raise OSError("disk full")

        ws.beside(fail)
        with pytest.raises(OSError, match="disk full"):
            ws.settle()
        ws.settle()  # nothing pending any more
    with pytest.raises(RuntimeError), Workspace.create(tmp_path) as ws2:
        ws2.beside(lambda: done.append("still there" if (ws2.base / "root").is_dir() else "gone"))
        raise RuntimeError("the build failed: its workspace waits for the work before it goes")
    assert done[-1] == "still there" and not ws2.base.exists()
