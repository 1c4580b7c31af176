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

A build killed outright (SIGKILL, the OOM killer, a power cut of the process) runs none of that:
its tree stays, its root still mounted. Each workspace holds an ``flock`` on its ``owner`` file
for as long as its build lives (the kernel drops it when the process dies, however it dies), so
:func:`reclaim`, which the next build runs on its work parent and ``imagekit cache gc`` on every
work parent builds used, unmounts and removes exactly the workspaces no live build holds.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from imagekit.run import run

from .space import mount_table

log = logging.getLogger(__name__)

PREFIX = "imagekit-build-"
OWNER = "owner"


@dataclass(frozen=True)
class Workspace:
    base: Path
    _background: list[threading.Thread] = field(default_factory=list, repr=False, compare=False)
    _mounts: list[Path] = field(default_factory=list, repr=False, compare=False)
    _pending: list[Future[object]] = field(default_factory=list, repr=False, compare=False)

    @classmethod
    @contextlib.contextmanager
    def create(cls, parent: Path | None = None) -> Iterator[Workspace]:
        if parent is not None:
            parent.mkdir(parents=True, exist_ok=True)
        base = Path(tempfile.mkdtemp(prefix=PREFIX, dir=parent))
        ws = cls(base)
        before = set(_children_of(os.getpid()))
        # Owned until it is gone: a reclaim never races this build's own clean-up.
        with contextlib.ExitStack() as owned:
            try:
                owned.enter_context(_owned(base))
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

    @property
    def upper(self) -> Path | None:
        """What the build wrote over the stage, while the root is an overlay (:meth:`layer`)."""
        return self.path("upper") if self.root in self._mounts else None

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

    def beside(self, work: Callable[[], object]) -> None:
        """Run ``work`` in a thread beside the build's steps until :meth:`settle` (or the
        workspace's end, which waits for it but ignores its failure: the build failed anyway)."""
        future: Future[object] = Future()

        def go() -> None:
            try:
                future.set_result(work())
            except BaseException as exc:  # noqa: BLE001 - the build's thread raises it
                future.set_exception(exc)

        thread = threading.Thread(target=go, name="imagekit-beside", daemon=True)
        thread.start()
        self._background.append(thread)
        self._pending.append(future)

    def settle(self) -> None:
        """Wait for the work :meth:`beside` started; its first failure is raised here."""
        while self._pending:
            self._pending.pop(0).result()

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


@contextlib.contextmanager
def _owned(base: Path) -> Iterator[IO[bytes]]:
    """Hold the workspace's ``owner`` lock while the build lives. The file is locked before it
    has its name, so :func:`reclaim` never sees an ``owner`` it could lock that is not stale."""
    partial = base / f".{OWNER}.part"
    with open(partial, "xb") as handle:  # not inherited by children (close-on-exec)
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        handle.write(f"{os.getpid()}\n".encode())
        handle.flush()
        os.rename(partial, base / OWNER)
        yield handle


def reclaim(parent: Path) -> list[Path]:
    """Unmount and remove the workspaces in ``parent`` of builds that died without cleaning up
    (their ``owner`` lock free); the ones removed. A live build's workspace, one of another
    user's, or one without an owner file (made by an older imagekit) is left alone."""
    removed: list[Path] = []
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        candidates = [e for e in os.scandir(parent) if e.name.startswith(PREFIX)]
        for entry in candidates:
            if _stale(Path(entry.path)):
                removed.append(Path(entry.path))
    return removed


def _stale(base: Path) -> bool:
    """Clean up ``base`` if its build is gone (True when it was)."""
    try:
        st = os.lstat(base)
        if not os.path.isdir(base) or os.path.islink(base) or st.st_uid != os.geteuid():
            return False
        handle = open(base / OWNER, "rb")  # noqa: SIM115 - held through the removal below
    except OSError:
        return False
    with handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # its build is alive
        owner = handle.read().decode(errors="replace").strip()
        log.warning("removing the workspace %s of a build that died (process %s)", base, owner or "?")
        for target in sorted(mounts_under(base), key=lambda p: len(p.parts), reverse=True):
            if run(["umount", target], check=False).returncode != 0:
                run(["umount", "--lazy", target], check=False)
        if mounts_under(base):
            log.warning("not removing %s: still mounted", base)
            return False
        remove_tree(base)
    return True


def mounts_under(path: Path) -> list[Path]:
    """The mount points at or below ``path`` in this mount namespace."""
    return [point for point, _ in mount_table() if point == path or path in point.parents]


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
