"""The mutable state of one build: its temporary directory, and the guarantee it goes away.

    with Workspace.create(parent) as ws:
        ws.root        # the image's root tree
        ws.layer(lower)  # …or an overlay of an upper directory here over ``lower``
        ws.path("disk.raw")

On any exit (success, error, Ctrl-C, or SIGTERM turned into ``Interrupted`` by
``imagekit.interrupt.interruptible``) the workspace first stops the build's child processes, then
unmounts the root if :meth:`Workspace.layer` mounted it, and removes the tree without crossing into
other filesystems, so a mount left in it (there should be none: chroots run in private mount
namespaces) can never take host files with it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from imagekit.run import run

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Workspace:
    base: Path
    _background: list[threading.Thread] = field(default_factory=list, repr=False, compare=False)
    _mounts: list[Path] = field(default_factory=list, repr=False, compare=False)

    @classmethod
    @contextlib.contextmanager
    def create(cls, parent: Path | None = None) -> Iterator[Workspace]:
        if parent is not None:
            parent.mkdir(parents=True, exist_ok=True)
        base = Path(tempfile.mkdtemp(prefix="imagekit-build-", dir=parent))
        ws = cls(base)
        before = set(_children_of(os.getpid()))
        try:
            ws.root.mkdir()
            yield ws
        except BaseException:
            # Only what this build started: other children of the process are not ours.
            stop_children(exclude=before)
            raise
        finally:
            for thread in ws._background:
                thread.join()
            ws.unmount()
            remove_tree(base)

    @property
    def root(self) -> Path:
        return self.base / "root"

    def path(self, name: str) -> Path:
        return self.base / name

    def layer(self, lower: Path) -> bool:
        """Mount the root as an overlay of a new upper directory over ``lower`` (never written);
        False when no overlay could be mounted here (the root is left as it was)."""
        upper, work = self.path("upper"), self.path("overlay-work")
        # The option string separates with , and : (and escapes with \): such paths cannot go in.
        if any(ch in os.fspath(p) for p in (lower, upper, work) for ch in ",:\\"):
            return False
        upper.mkdir()
        work.mkdir()
        options = f"lowerdir={lower},upperdir={upper},workdir={work},index=on"
        proc = run(["mount", "-t", "overlay", "imagekit-root", "-o", options, self.root], check=False)
        if proc.returncode != 0:
            log.info("no overlay for the root: %s", proc.stderr.decode(errors="replace").strip())
            return False
        self._mounts.append(self.root)
        return True

    def unmount(self) -> None:
        """Unmount what :meth:`layer` mounted (lazily if something still holds it)."""
        while self._mounts:
            target = self._mounts.pop()
            if run(["umount", target], check=False).returncode != 0:
                run(["umount", "--lazy", target], check=False)

    def drop_root(self, then: Callable[[], object] | None = None) -> None:
        """Unmount and remove the root tree in the background (it is in the disk image now),
        then run ``then`` there; joined on exit."""

        def drop() -> None:
            self.unmount()
            for name in ("root", "upper", "overlay-work"):
                remove_tree(self.path(name))
            if then is not None:
                then()

        thread = threading.Thread(target=drop, name="imagekit-drop-root", daemon=True)
        thread.start()
        self._background.append(thread)


def _children_of(pid: int) -> list[int]:
    found: list[int] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            child = int(entry.name)
            found.append(child)
            found.extend(_children_of(child))
    return found


def stop_children(grace: float = 5.0, *, exclude: Collection[int] = ()) -> None:
    """Terminate processes this build left running (an interrupted mmdebstrap and its dpkg)."""
    pids = [p for p in _children_of(os.getpid()) if p not in exclude]
    if not pids:
        return
    log.debug("stopping leftover processes %s", pids)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            pids = [p for p in pids if _alive(p)]
            if not pids:
                return
            time.sleep(0.1)


def _alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def remove_tree(path: Path) -> None:
    """``rm -rf`` that never descends into a mount point (``--one-file-system``)."""
    if not path.exists() and not path.is_symlink():
        return
    # rm in C is several times faster than a Python walk over a 20,000-file root tree.
    proc = run(["rm", "-rf", "--one-file-system", "--", path], check=False)
    if proc.returncode != 0:
        log.warning("could not remove all of %s: %s", path, proc.stderr.decode(errors="replace").strip())
