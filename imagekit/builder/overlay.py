"""The package stage as the read-only lower layer of the image's root, kept for the next build.

A rebuild that changes only files, users or post-commands used to extract the cached stage
(about 480 MB in 15,000 files for the cloud recipe) into its workspace and remove it after:
half a second on the critical path and a second of CPU, each build. Instead the stage is a
directory no build writes: the image's root is an overlayfs mount of it under an empty upper
directory in the workspace (:meth:`.workspace.Workspace.layer`), so customize and the
post-commands write only what they change, and ``mkfs.ext4 -d`` reads the merged tree. After
the build the stage stays in ``WORK_PARENT/imagekit-stages/KEY`` (RAM when the build works in
RAM), where the next build of the same stage mounts it again instead of extracting the tarball.

Every build that can (:func:`layered`: not sandboxed — the sandbox shifts the tree's owners —
and no partition split off the root — a directory cannot be moved out of an overlay) goes this
way, a cold one too, over the tree mmdebstrap made: cold and warm builds read the same kind of
tree, so their bytes stay the same. The stage is clamped to ``SOURCE_DATE_EPOCH`` (part of its
key) before it is layered, so the build's own clamp copies nothing up; ``index=on`` keeps hard
links whole when one name is copied up, as they are in a plain tree.

How many stages a work parent keeps is the site's choice (``IMAGEKIT_KEPT_STAGES``, default 1;
0 keeps none): keeping one removes the least recently used beyond that number that no build
holds (each build holds its stage with a shared ``flock``; removing takes it exclusively). The
builder keeps one only while the place keeps room for the next build (:func:`.space.room_to_keep`:
on a tmpfs that is memory). ``imagekit cache list`` shows them and ``cache gc`` removes them
(:meth:`KeptStages.evict`). The directory must be the builder's own (a real directory, mode
0700): in a world-writable parent such as /dev/shm another user could otherwise plant a stage.

    stages = KeptStages(work_parent / "imagekit-stages")
    with stages.hold(key) as kept:   # the kept tree, or None
        ...
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import stat
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

from imagekit import environment
from imagekit.errors import InputError
from imagekit.run import run
from imagekit.state import State

from .cache import work_parents
from .disk import DiskLayout, Role
from .sandbox import Sandbox
from .workspace import reclaim, remove_tree

log = logging.getLogger(__name__)

DIRECTORY_NAME = "imagekit-stages"
DEFAULT_LIMIT = 1


@dataclass(frozen=True)
class KeptStage:
    key: str
    path: Path
    size: int  # bytes the tree takes on its filesystem
    last_used: float
    in_use: bool  # a build holds it now


def layered(layout: DiskLayout, sandbox: Sandbox | None) -> bool:
    """Whether the build layers its root over the stage (the same answer cold and warm)."""
    return sandbox is None and not any(p.role is Role.DATA for p in layout.partitions)


@dataclass(frozen=True)
class KeptStages:
    directory: Path
    limit: int = DEFAULT_LIMIT  # how many :meth:`keep` leaves (``IMAGEKIT_KEPT_STAGES``)

    @classmethod
    def beside(cls, work_parent: Path, *, limit: int = DEFAULT_LIMIT) -> KeptStages:
        return cls(work_parent / DIRECTORY_NAME, limit)

    def _usable(self, *, make: bool = False) -> bool:
        """The directory exists (with ``make``, made if not: only a build that keeps a stage
        leaves it), is a real directory, ours, and no one else's."""
        if make:
            with contextlib.suppress(FileExistsError):
                self.directory.mkdir(mode=0o700, parents=True)
        try:
            st = os.lstat(self.directory)
        except FileNotFoundError:
            return False
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
            log.warning("not keeping package stages in %s: not a private directory of ours", self.directory)
            return False
        return True

    def _lock(self, key: str) -> Path:
        return self.directory / f".{key}.lock"

    @contextlib.contextmanager
    def hold(self, key: str) -> Iterator[Path | None]:
        """The kept stage ``key`` (None when there is none), not removed while this is held."""
        if not self._usable():
            yield None
            return
        with open(self._lock(key), "a+b") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH)
            os.utime(handle.fileno())  # its last use, for eviction and ``cache list``
            tree = self.directory / key
            yield tree if tree.is_dir() else None

    def keep(self, key: str, tree: Path) -> bool:
        """Move ``tree`` (the clamped stage ``key``, on the same filesystem) here, and remove
        the least recently used beyond the limit that no build holds; False when it was not
        kept (the caller removes it)."""
        if self.limit < 1 or not self._usable(make=True):
            return False
        with open(self._lock(key), "a+b") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH)
            os.utime(handle.fileno())
            try:
                os.rename(tree, self.directory / key)
            except OSError:  # kept by another build meanwhile, or another filesystem
                return False
        self.evict(keep=self.limit)
        return True

    def entries(self, *, sizes: bool = True) -> list[KeptStage]:
        """The kept stages, most recently used first (``sizes``: measured with du)."""
        if not self._usable():
            return []
        found = []
        for entry in os.scandir(self.directory):
            if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
                continue
            lock = self._lock(entry.name)
            try:
                last_used = lock.stat().st_mtime
            except FileNotFoundError:
                last_used = entry.stat(follow_symlinks=False).st_mtime
            size = _disk_usage(Path(entry.path)) if sizes else 0
            found.append(KeptStage(entry.name, Path(entry.path), size, last_used, self._held(entry.name)))
        return sorted(found, key=lambda k: (-k.last_used, k.key))

    def _held(self, key: str) -> bool:
        with open(self._lock(key), "a+b") as handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
        return False

    def evict(
        self,
        *,
        keep: int | None = None,
        older_than: float | None = None,
        keys: Collection[str] = (),
        sizes: bool = False,
    ) -> list[KeptStage]:
        """Remove the kept stages beyond the ``keep`` most recently used, those last used before
        the time ``older_than``, and those of ``keys`` (stages whose tarball is gone), skipping
        any a build holds; also what a build killed while removing one left. The ones removed."""
        entries = self.entries(sizes=sizes)
        doomed = [
            e
            for index, e in enumerate(entries)
            if (keep is not None and index >= keep)
            or (older_than is not None and e.last_used < older_than)
            or e.key in keys
        ]
        removed = [e for e in doomed if self._remove(e.key)]
        for leftover in self.directory.glob(".*.removing") if self.directory.is_dir() else ():
            self._remove(leftover.name[1 : -len(".removing")])
        return removed

    def _remove(self, key: str) -> bool:
        with open(self._lock(key), "a+b") as handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # a build has it mounted
            trash = self.directory / f".{key}.removing"
            if (self.directory / key).is_dir():
                if trash.exists():  # a build killed while removing this key's last tree
                    remove_tree(trash)
                os.rename(self.directory / key, trash)
            remove_tree(trash)
        # The lock file stays: another build may have it open, waiting, and a new file of that
        # name would be another lock.
        return True


def _disk_usage(path: Path) -> int:
    proc = run(["du", "-s", "-B1", "--one-file-system", "--", path], check=False)
    try:
        return int(proc.stdout.split()[0])
    except (IndexError, ValueError):
        return 0


def kept_limit() -> int:
    """How many stages a work parent keeps (``IMAGEKIT_KEPT_STAGES``)."""
    value = environment.current().kept_stages
    if value is None:
        return DEFAULT_LIMIT
    try:
        limit = int(value)
    except ValueError:
        limit = -1
    if limit < 0:
        raise InputError(f"IMAGEKIT_KEPT_STAGES: expected a number ≥ 0, got {value!r}")
    return limit


def kept_everywhere(state: State) -> list[KeptStage]:
    """The stages kept in every place builds of ``state`` worked in."""
    return [e for parent in work_parents(state) for e in KeptStages.beside(parent).entries()]


@dataclass(frozen=True)
class Collected:
    kept: list[KeptStage]  # kept stages removed
    workspaces: list[Path]  # workspaces of dead builds removed


def collect(
    state: State, *, keep: int | None, older_than_days: float | None, gone: Collection[str]
) -> Collected:
    """``cache gc`` beyond the tarballs, in every place builds of ``state`` worked in: the
    workspaces of builds that died; the kept stages beyond the ``keep`` most recently used in a
    place, unused for ``older_than_days``, or whose tarball went (``gone``) — none a build holds.
    A stage another state's cache still has may go too: it is only the next build's shortcut."""
    kept: list[KeptStage] = []
    workspaces: list[Path] = []
    cutoff = None if older_than_days is None else time.time() - older_than_days * 86400
    for parent in work_parents(state):
        workspaces += reclaim(parent)
        kept += KeptStages.beside(parent).evict(keep=keep, older_than=cutoff, keys=gone, sizes=True)
    return Collected(kept, workspaces)
