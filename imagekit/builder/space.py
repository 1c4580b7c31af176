"""Free-space check before a build starts, from an estimate of what each place will hold.

The work directory holds the root tree (about 1 GiB for the generic kernel), a cached copy of
it, and the sparse raw disk whose allocated part is about the tree again. The output directory
holds one image per format; compressed formats are smaller than the tree, the raw one is not.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from imagekit import environment
from imagekit.errors import InputError
from imagekit.recipe.model import OutputFormat

MIB = 1024 * 1024
TREE_ESTIMATE_MIB = 1200


class Usage(NamedTuple):
    total: int
    used: int
    free: int


def estimate(disk_mib: int, formats: tuple[OutputFormat, ...]) -> tuple[int, int]:
    """(work MiB, output MiB) a build needs at most."""
    tree = min(TREE_ESTIMATE_MIB, disk_mib)
    work = 3 * tree
    output = sum(tree if fmt is OutputFormat.RAW else tree * 3 // 4 for fmt in formats)
    return work, output


# Where a build works when nobody said: RAM when it has room. Restoring the cached package
# stage onto this class of VM disk costs ~12 s of kernel time and ~0.5 s on tmpfs; the tree,
# its raw disk and the cache copy are all short-lived, so RAM is the natural place for them.
RAM_WORK_DIR = Path("/dev/shm")
RAM_HEADROOM_MIB = 2048  # leave this much memory available to everything else


def choose_work_parent(explicit: Path | None, need_mib: int, *, ram: Path = RAM_WORK_DIR) -> Path:
    """``explicit`` (``--workdir``), else ``$TMPDIR`` if set, else ``ram`` when it is a tmpfs with
    room for ``need_mib`` and the memory to back it, else ``/tmp``."""
    if explicit is not None:
        return explicit
    if (tmpdir := environment.current().tmpdir) is not None:
        return Path(tmpdir)
    if _tmpfs_with_room(ram, need_mib):
        return ram
    return Path("/tmp")


def room_to_keep(parent: Path, need_mib: int) -> bool:
    """Whether ``parent`` may keep a package stage after a build (:mod:`.overlay`): only while
    the next build, needing ``need_mib``, would still work there — on a tmpfs with the memory to
    spare that :func:`choose_work_parent` asks for, so a kept stage never pushes a build out of
    RAM (nor holds memory the machine is short of)."""
    if _is_tmpfs(parent):
        return _tmpfs_with_room(parent, need_mib)
    try:
        return shutil.disk_usage(parent).free // MIB >= need_mib
    except OSError:
        return False


def mount_table() -> list[tuple[Path, str]]:
    """(mount point, filesystem type) of every mount in this mount namespace. Raises OSError."""
    table = []
    with open("/proc/self/mountinfo", "rb") as fh:
        for line in fh:
            fields = line.split()
            # Field 5 is the mount point, its spaces and backslashes escaped as octal; the type
            # follows the "-" that ends the optional fields.
            point = re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), fields[4])
            table.append((Path(os.fsdecode(point)), fields[fields.index(b"-") + 1].decode()))
    return table


def _is_tmpfs(path: Path) -> bool:
    try:
        return (path, "tmpfs") in mount_table()
    except (OSError, ValueError, IndexError):
        return False


def _tmpfs_with_room(path: Path, need_mib: int) -> bool:
    try:
        free_mib = shutil.disk_usage(path).free // MIB
        meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        available_mib = int(meminfo["MemAvailable"].split()[0]) // 1024
    except (OSError, KeyError, ValueError, IndexError):
        return False
    return (
        _is_tmpfs(path)
        and os.access(path, os.W_OK)
        and min(free_mib, available_mib) >= need_mib + RAM_HEADROOM_MIB
    )


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_free_space(
    needs: dict[Path, int], *, usage: Callable[[Path], Usage] = lambda p: Usage(*shutil.disk_usage(p))
) -> None:
    """Raise InputError when a place has less free space than needed (places on one device add up)."""
    by_device: dict[int, tuple[Path, int]] = {}
    for path, mib in needs.items():
        real = _existing(path)
        dev = os.stat(real).st_dev
        known = by_device.get(dev)
        by_device[dev] = (known[0] if known else real, (known[1] if known else 0) + mib)
    for path, mib in by_device.values():
        free = usage(path).free // MIB
        if free < mib:
            raise InputError(
                f"not enough free disk space in {path}: the build needs about {mib} MiB, {free} MiB free",
                hint="free some space, or point TMPDIR / -o at a larger filesystem",
            )
