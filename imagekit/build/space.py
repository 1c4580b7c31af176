"""Free-space check before a build starts, from an estimate of what each place will hold.

The work directory holds the root tree (about 1 GiB for the generic kernel), a cached copy of
it, and the sparse raw disk whose allocated part is about the tree again. The output directory
holds one image per format; compressed formats are smaller than the tree, the raw one is not.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

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
