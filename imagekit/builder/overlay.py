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

One stage is kept at a time per work parent: keeping one removes the others no build holds
(each build holds its stage with a shared ``flock``). The directory must be the builder's own
(a real directory, mode 0700): in a world-writable parent such as /dev/shm another user could
otherwise plant a stage there.

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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .disk import DiskLayout, Role
from .sandbox import Sandbox
from .workspace import remove_tree

log = logging.getLogger(__name__)

DIRECTORY_NAME = "imagekit-stages"


def layered(layout: DiskLayout, sandbox: Sandbox | None) -> bool:
    """Whether the build layers its root over the stage (the same answer cold and warm)."""
    return sandbox is None and not any(p.role is Role.DATA for p in layout.partitions)


@dataclass(frozen=True)
class KeptStages:
    directory: Path

    @classmethod
    def beside(cls, work_parent: Path) -> KeptStages:
        return cls(work_parent / DIRECTORY_NAME)

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
            tree = self.directory / key
            yield tree if tree.is_dir() else None

    def keep(self, key: str, tree: Path) -> bool:
        """Move ``tree`` (the clamped stage ``key``, on the same filesystem) here, and remove
        the other stages no build holds; False when it was not kept (the caller removes it)."""
        if not self._usable(make=True):
            return False
        with open(self._lock(key), "a+b") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH)
            try:
                os.rename(tree, self.directory / key)
            except OSError:  # kept by another build meanwhile, or another filesystem
                return False
        self.evict(but=key)
        return True

    def evict(self, *, but: str | None = None) -> list[str]:
        """Remove every kept stage except ``but`` that no build holds; the keys removed."""
        removed: list[str] = []
        if not self.directory.is_dir():
            return removed
        for entry in sorted(self.directory.iterdir()):
            if entry.name.startswith(".") or entry.name == but:
                continue
            with open(self._lock(entry.name), "a+b") as handle:
                try:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a build has it mounted
                trash = self.directory / f".{entry.name}.removing"
                os.rename(entry, trash)
                remove_tree(trash)
            removed.append(entry.name)
        return removed
