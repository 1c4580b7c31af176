"""Raw disk → the requested formats, each written atomically into the output directory.

qcow2 is zstd-compressed (fast, and about 40 % of the raw allocation) and written by
:mod:`.qcow2` itself, reusing the clusters an earlier build compressed (:mod:`.clusters`); the
others by ``qemu-img convert``: vmdk is a monolithic sparse disk, vdi
dynamic, and vhd is qemu-img's ``vpc`` with ``force_size`` so its virtual size is exactly the
raw size (what Azure and Hyper-V expect).

    staged = convert(raw, OutputFormat.QCOW2, out_dir / "x.qcow2")   # a hidden partial file
    publish(staged)                                                  # the final name
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from imagekit.recipe.model import OutputFormat
from imagekit.run import run

from .clusters import ClusterStore
from .qcow2 import Buffer, write_qcow2

log = logging.getLogger(__name__)

OPTIONS: dict[OutputFormat, tuple[str, ...]] = {
    OutputFormat.RAW: (),
    OutputFormat.VMDK: ("-o", "subformat=monolithicSparse"),
    OutputFormat.VDI: ("-o", "static=off"),
    OutputFormat.VHD: ("-o", "subformat=dynamic,force_size=on"),
}


@dataclass(frozen=True)
class Staged:
    """An output written under a hidden name next to its final ``path``."""

    partial: Path
    path: Path
    format: OutputFormat


def partial_name(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.{os.getpid()}.part")


def convert(
    raw: Path,
    fmt: OutputFormat,
    dest: Path,
    *,
    clusters: ClusterStore | None = None,
    on_bytes: Callable[[Sequence[Buffer]], None] | None = None,
) -> Staged:
    """``on_bytes`` gets the whole output before it is written, when the writer has it in
    memory (qcow2): then it is called, else not."""
    partial = partial_name(dest)
    if fmt is OutputFormat.RAW:
        try:
            os.link(raw, partial)  # same filesystem: no copy at all
        except OSError:
            run(["cp", "--sparse=always", raw, partial], step="write raw")
    elif fmt is OutputFormat.QCOW2:
        written = write_qcow2(raw, partial, known=clusters.load() if clusters else None, on_bytes=on_bytes)
        if clusters is not None:
            log.info(
                "qcow2: %d of %d clusters as an earlier build compressed them",
                written.reused,
                len(written.clusters),
            )
            # Both are mostly waiting for the disk: the cache's file is written beside the fsync.
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="imagekit-clusters") as pool:
                saved = pool.submit(clusters.save_if_stale, written)
                _sync(partial)
                saved.result()
            return Staged(partial, dest, fmt)
    else:
        run(
            ["qemu-img", "convert", "-f", "raw", "-O", fmt.qemu_img_name, *OPTIONS[fmt], raw, partial],
            step=f"convert to {fmt.value} (qemu-img)",
        )
    _sync(partial)
    return Staged(partial, dest, fmt)


def _sync(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def publish(staged: Staged) -> Path:
    os.replace(staged.partial, staged.path)
    return staged.path


def discard(staged: Staged) -> None:
    staged.partial.unlink(missing_ok=True)
