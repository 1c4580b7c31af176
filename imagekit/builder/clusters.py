"""The qcow2 clusters an earlier build of the same package stage compressed, found by content.

A rebuild that changes only files, users or post-commands makes a raw disk whose 64 KiB
clusters are, but for the filesystems' metadata and the changed files, the clusters of the
build before it. :mod:`.qcow2` looks each raw cluster up here by its SHA-256 and compresses
only those it does not find, which is most of a rebuild's conversion time saved.

The output is the same bytes as without this file: what the writer makes of a cluster depends
on the cluster, the zstd level and the zstd library alone, and the file's first line names
the last two (a file another version wrote is ignored, and replaced). One file per stage key,
``STATE/cache/rootfs/KEY.clusters``, beside the stage's tarball and removed with it, replaced
atomically.

It holds the clusters of the last build that found most of its own missing. A new file (one
more user, a post-command that writes a file) shifts where ``mkfs.ext4 -d`` puts every file
after it, so the clusters of the build before are then mostly gone; an author's next rebuilds
keep that file set and are made of the clusters of this one.

    store = ClusterStore(path)
    written = write_qcow2(raw, dest, known=store.load())
    store.save_if_stale(written)
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

import zstandard

from .qcow2 import CLUSTER, LEVEL, Stored, Written

log = logging.getLogger(__name__)

# After the first line: the record count, then per record its raw cluster's SHA-256, whether
# it is compressed, the data's offset from the start of the data and its length; then the data.
_COUNT = struct.Struct("<I")
_RECORD = struct.Struct("<32sBQI")
# Replaced when fewer than 1/STALE_BELOW of a build's clusters were found there: the writing
# (about 0.3 s for a cloud image) is paid once per new file set, not by every rebuild.
STALE_BELOW = 2


def _first_line() -> bytes:
    params = {"zstd": zstandard.ZSTD_VERSION, "level": LEVEL, "cluster": CLUSTER}
    return b"imagekit qcow2 clusters 2 " + json.dumps(params, sort_keys=True).encode() + b"\n"


@dataclass(frozen=True)
class ClusterStore:
    path: Path

    def load(self) -> dict[bytes, Stored]:
        """The clusters stored, by digest (their data mapped from the file, not read): empty
        when there is no file, one this version of the writer would not have made, or a
        damaged one."""
        try:
            with open(self.path, "rb") as fh:
                if os.fstat(fh.fileno()).st_size == 0:
                    return {}
                mapped = mmap.mmap(fh.fileno(), 0, prot=mmap.PROT_READ)
        except FileNotFoundError:
            return {}
        head = _first_line()
        if mapped[: len(head)] != head:
            return {}
        found = _parse(memoryview(mapped), len(head))
        if found is None:
            log.warning("ignoring a damaged cluster cache: %s", self.path.name)
            return {}
        return found

    def current(self) -> bool:
        try:
            with open(self.path, "rb") as fh:
                return fh.read(len(_first_line())) == _first_line()
        except FileNotFoundError:
            return False

    def save_if_stale(self, written: Written) -> None:
        """Keep the clusters of ``written`` unless a current file gave it most of them already
        (then the next build finds them there as well)."""
        if self.current() and written.reused * STALE_BELOW >= len(written.clusters):
            return
        stored = written.stored()
        # pid and thread: a build service may run two builds of one stage in one process
        partial = self.path.with_name(f".{self.path.name}.{os.getpid()}.{threading.get_ident()}.part")
        try:
            with open(partial, "wb") as fh:
                fh.write(_first_line() + _COUNT.pack(len(stored)))
                at = 0
                for digest, cluster in stored.items():
                    fh.write(_RECORD.pack(digest, cluster.compressed, at, len(cluster.data)))
                    at += len(cluster.data)
                for cluster in stored.values():
                    fh.write(cluster.data)
                os.fsync(fh.fileno())
            os.replace(partial, self.path)
        finally:
            partial.unlink(missing_ok=True)


def _parse(content: memoryview, at: int) -> dict[bytes, Stored] | None:
    if at + _COUNT.size > len(content):
        return None
    (count,) = _COUNT.unpack_from(content, at)
    data = at + _COUNT.size + count * _RECORD.size
    if data > len(content):
        return None
    found: dict[bytes, Stored] = {}
    for digest, compressed, offset, length in _RECORD.iter_unpack(content[at + _COUNT.size : data]):
        start = data + offset
        if compressed > 1 or length > CLUSTER or start + length > len(content):
            return None
        found[digest] = Stored(content[start : start + length], bool(compressed))
    return found
